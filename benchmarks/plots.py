"""The report's PNG plots, one per scenario that ran (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTS = {
    "latency": "latency_by_batch.png",
    "throughput": "throughput_by_batch.png",
    "roc": "roc_curves.png",
    "pipeline_latency": "pipeline_latency.png",
    "soak": "soak.png",
}
SHORT = {"onnxruntime": "ort", "tensorrt": "trt", "torch-eager": "torch"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(model: dict[str, Any], path: Path) -> Path:
    """Per-call latency distributions: one panel per batch, one box per engine/precision."""
    plt = _pyplot()
    batches = sorted({c["batch"] for c in model["cells"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(3.2 * len(batches) + 1, 4), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        cells = [c for c in model["cells"] if c["batch"] == batch]
        ax.boxplot([c["samples_ms"] for c in cells], showfliers=True, whis=(1, 99))
        ax.set_xticks(
            range(1, len(cells) + 1),
            [f"{SHORT.get(c['engine'], c['engine'])}\n{c['precision']}" for c in cells],
            fontsize=8,
        )
        ax.set_yscale("log")
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("latency per call (ms)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Backend latency per call (whiskers p1-p99, warm-up excluded)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(model: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = sorted({(c["engine"], c["precision"]) for c in model["cells"]})
    for engine, precision in labels:
        cells = sorted(
            (c for c in model["cells"] if c["engine"] == engine and c["precision"] == precision),
            key=lambda c: c["batch"],
        )
        ax.plot(
            [c["batch"] for c in cells],
            [c["throughput_ips"] for c in cells],
            marker="o",
            label=f"{engine} {precision}",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title("Throughput by batch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(accuracy: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, entry in accuracy["engines"].items():
        roc, auc = entry["metrics"]["roc"], entry["metrics"]["image_auroc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"{label} (AUROC {auc:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Image-level ROC per precision")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_pipeline_latency(pipeline: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    groups: dict[str, list[float]] = {}
    for run in pipeline["runs"]:
        groups.setdefault(f"{run['cameras']} cam, {run['load']}", []).extend(
            v for v in run["samples_total_ms"] if v is not None and v == v
        )
    for label, values in groups.items():
        if values:
            ax.hist(values, bins=50, histtype="step", label=label)
    ax.set_xlabel("capture → publish (ms)")
    ax.set_ylabel("results")
    ax.set_title("Pipeline latency (result payloads' latency_ms.total)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_soak(soak: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    t = [s["t_s"] for s in soak["samples"]]
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
    for ax, key, label in zip(
        axes, ("rss_mb", "threads", "fds"), ("RSS (MiB)", "threads", "open fds"), strict=True
    ):
        ax.plot(t, [s[key] if s[key] is not None else float("nan") for s in soak["samples"]], marker=".")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since the first result")
    fig.suptitle(f"Daemon soak: {soak['cameras']} camera(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, str]:
    written: dict[str, str] = {}
    if report.get("model") and report["model"].get("cells"):
        written["latency"] = plot_latency(report["model"], out_dir / PLOTS["latency"]).name
        written["throughput"] = plot_throughput(report["model"], out_dir / PLOTS["throughput"]).name
    if report.get("accuracy"):
        written["roc"] = plot_roc(report["accuracy"], out_dir / PLOTS["roc"]).name
    if report.get("pipeline"):
        written["pipeline_latency"] = plot_pipeline_latency(
            report["pipeline"], out_dir / PLOTS["pipeline_latency"]
        ).name
    if report.get("soak") and report["soak"].get("samples"):
        written["soak"] = plot_soak(report["soak"], out_dir / PLOTS["soak"]).name
    return written
