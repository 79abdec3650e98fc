"""Console entry points ``edge-train`` and ``edge-eval``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.checkpoint import CheckpointError
from training.data import DatasetError


def train_main(argv: list[str] | None = None) -> int:
    from training.geometry import MAX_TILES
    from training.train import DEFAULT_MODEL, DEFAULTS, TrainConfig, train

    p = argparse.ArgumentParser(prog="edge-train", description="Train an anomaly model on good images only.")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=sorted(DEFAULTS),
        help=f"model kind (default: {DEFAULT_MODEL}, the recommended kNN; see docs/models.md)",
    )
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="MVTec category folder (uses train/good) or a folder of good images",
    )
    p.add_argument(
        "--out", required=True, type=Path, help="run directory; an unfinished run there is resumed"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="share of good images held out for calibration"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="model config override, e.g. image_size=128; a part of gtrans-knn: gtrans.epochs is --epochs, "
        "gtrans.dim=64 or patchcore.bank_size=2048",
    )
    p.add_argument("--threads", type=int)
    p.add_argument("--stop-after", type=int, help="stop after this many epochs; run again to resume")
    p.add_argument(
        "--geometry",
        default="auto",
        choices=("auto", "letterbox", "stretch"),
        help="how images of another shape reach the square input (default auto: measured on the held-out "
        "good images unless every image is square; docs/accuracy.md)",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--tile",
        type=int,
        metavar="SIZE",
        help="train on SIZE px tiles of the good images (the model input) at --scale; the bundle then "
        "inspects every camera region in such tiles (docs/tiling.md)",
    )
    p.add_argument("--tile-overlap", type=int, default=0, metavar="PX", help="with --tile: tile overlap")
    p.add_argument(
        "--scale", type=float, default=1.0, help="with --tile: image scale before cutting (1: native pixels)"
    )
    p.add_argument(
        "--max-tiles",
        type=int,
        default=MAX_TILES,
        metavar="N",
        help="with --geometry auto, for the kNN kind: tiles of the images at native scale are probed "
        "against the whole image when N tiles see the part 1.5x finer; the bundle then costs up to N "
        "passes a frame (default %(default)s; 1: never tile; docs/accuracy.md)",
    )
    args = p.parse_args(argv)
    if args.max_tiles < 1:
        p.error("--max-tiles needs N >= 1")
    if args.tile is None and (args.tile_overlap or args.scale != 1.0):
        p.error("--tile-overlap and --scale go with --tile SIZE")
    try:
        from edge.capture.tiling import Tiling

        tiling = None if args.tile is None else Tiling(args.tile, args.tile_overlap, args.scale)
        overrides = dict(parse_override(s) for s in args.set)
        cfg = TrainConfig(
            model=args.model,
            data=args.data,
            out=args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            val_fraction=args.val_fraction,
            model_config=overrides,
            progress=not args.quiet,
            threads=args.threads,
            stop_after=args.stop_after,
            geometry=args.geometry,
            tiling=tiling,
            max_tiles=args.max_tiles,
        )
        path = train(cfg)
    except (DatasetError, CheckpointError, ValueError) as exc:
        print(f"edge-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every finished epoch is saved; one line, no traceback
        from training.interrupted import EXIT_INTERRUPTED, interrupted_line

        print(f"\nedge-train: {interrupted_line(args.out)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(path)
    return 0


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def eval_main(argv: list[str] | None = None) -> int:
    from training.evaluate import evaluate, format_table, write_json

    p = argparse.ArgumentParser(prog="edge-eval", description="Image/pixel AUROC and AUPRO of a checkpoint.")
    p.add_argument("checkpoint", type=Path)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="MVTec-layout category folder (test/, ground_truth/)")
    source.add_argument(
        "--pasted",
        action="store_true",
        help="no defect samples needed: defects pasted onto the good images training held out",
    )
    p.add_argument("--per-image", type=int, default=3, help="with --pasted: defective copies per good image")
    p.add_argument(
        "--defects",
        choices=("cutpaste", "small", "uneven"),
        default="cutpaste",
        help="with --pasted: cutpaste (patches, scars, blobs of 2-8 %% of the image), small (nicks, "
        "bridges and specks a few pixels wide) or uneven (faint soft-edged shading, smears and dents over "
        "10-30 %% of the image), the last two drawn at each image's own size",
    )
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    p.add_argument(
        "--worst",
        type=int,
        default=0,
        metavar="N",
        help="write the N highest-scoring good and N lowest-scoring defective images with their maps "
        "(overlay PNGs, the map's maximum circled) and an index, to --worst-dir",
    )
    p.add_argument(
        "--worst-dir", type=Path, help="where --worst writes (default: worst/ beside the checkpoint)"
    )
    p.add_argument(
        "--native",
        action="store_true",
        help="maps and masks at the images' own size, as tiled checkpoints always are (docs/tiling.md); with "
        "--pasted the defects are drawn at that size too",
    )
    args = p.parse_args(argv)
    if args.worst < 0:
        p.error("--worst needs N >= 0")
    worst_dir = args.worst_dir or args.checkpoint.parent / "worst"
    try:
        if args.pasted:
            from training.pasted_defects import evaluate_pasted

            result = evaluate_pasted(
                args.checkpoint,
                args.per_image,
                batch=args.batch,
                threads=args.threads,
                progress=not args.quiet,
                worst=args.worst,
                worst_dir=worst_dir,
                defects=args.defects,
                native=args.native,
            )
        else:
            result = evaluate(
                args.checkpoint,
                args.data,
                args.batch,
                args.threads,
                progress=not args.quiet,
                worst=args.worst,
                worst_dir=worst_dir,
                native=args.native,
            )
    except (DatasetError, CheckpointError, ValueError) as exc:
        print(f"edge-eval: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0
