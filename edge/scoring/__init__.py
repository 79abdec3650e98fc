"""Scoring: the inference thread (newest frame of each camera -> one backend batch -> scored frames), the
backends behind one Protocol (edge.scoring.backends, one table), and what a loaded model is (load, warm,
the resident set each camera runs: edge.scoring.models).

Data flows in from edge.capture and on to the publish thread. May import: edge.util, edge.commands,
edge.config, edge.capture, edge.trust, edge.results (each loaded model carries its postprocessor)."""
