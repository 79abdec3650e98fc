"""One file per model. Each has a dataclass config and ``forward(x) -> (score, anomaly_map)`` in eval mode."""
