"""``edge-evidence``: read the evidence store the daemon keeps (see :mod:`edge.stores.evidence`).

    edge-evidence list   --dir /var/lib/edge-anomaly/evidence [--camera line] [--verdict anomalous] [--json]
    edge-evidence export --config /etc/edge-anomaly/config.toml --out product-b [--camera line] [--model ID]

``export`` writes an MVTec-layout folder that ``edge-train --data`` accepts: good frames go to
``train/good/``; anomalous ones go to ``review/anomalous/`` with the model's masks in
``review/ground_truth/anomalous/<stem>_mask.png`` and their results in ``review/results/``, for a person to
confirm before any of them becomes test data. Exit codes: 0 ok, 2 bad arguments or no store, 1 other error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from edge.stores.evidence import Record, query

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _time(text: str) -> float:
    """Epoch seconds or ISO-8601 (``2026-12-01T20:00:00Z``)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch seconds nor ISO-8601") from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-evidence", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("list", "print the kept frames"), ("export", "write an MVTec-layout folder")):
        s = sub.add_parser(name, help=help_text)
        where = s.add_mutually_exclusive_group(required=True)
        where.add_argument("--dir", type=Path, help="the store's folder (evidence.dir)")
        where.add_argument("--config", type=Path, help="the daemon's config file (finds evidence.dir)")
        s.add_argument("--camera")
        s.add_argument("--model", help="only frames scored by this model id")
        s.add_argument("--since", type=_time, help="epoch seconds or ISO-8601 UTC")
        s.add_argument("--until", type=_time, help="epoch seconds or ISO-8601 UTC")
        s.add_argument("--limit", type=int)
        if name == "list":
            s.add_argument("--verdict", choices=["good", "anomalous"])
            s.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            s.add_argument("--out", type=Path, required=True, help="folder to write (created)")
            s.add_argument(
                "--as-good",
                action="store_true",
                help="put every selected frame in train/good whatever its verdict: for onboarding a new "
                "product, whose good parts the running model (trained on another product) calls anomalous. "
                "Select a period when only good parts ran (--since/--until) and look through them",
            )
    return p


def store_dir(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    from edge.config import load_config
    from edge.results.thresholds import resolve_state_dir

    config = load_config(args.config)
    return config.evidence.dir or resolve_state_dir(config.state_dir) / "evidence"


def list_records(records: List[Record], as_json: bool) -> None:
    if as_json:
        for rec in records:
            print(json.dumps(rec.to_json(), sort_keys=True))
        return
    print(
        f"{'id':>7}  {'time (UTC)':<23}  {'camera':<12} {'verdict':<9} {'reason':<8} {'score':>8}  model  "
        f"image"
    )
    for r in records:
        when = datetime.fromtimestamp(r.ts, timezone.utc).isoformat(timespec="milliseconds")[:23]
        verdict = "anomalous" if r.anomalous else "good"
        print(f"{r.id:>7}  {when:<23}  {r.camera:<12} {verdict:<9} {r.reason:<8} {r.score:>8.3f}  "
              f"{r.model_id}  {r.image}")  # fmt: skip
    print(f"{len(records)} frame(s)", file=sys.stderr)


def export(root: Path, records: List[Record], out: Path, as_good: bool = False) -> Dict[str, int]:
    """Copy ``records`` into ``out`` in MVTec layout; returns counts per destination."""
    good_dir = out / "train" / "good"
    review = out / "review"
    folders = (good_dir, review / "anomalous", review / "ground_truth" / "anomalous", review / "results")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    counts = {"train_good": 0, "review_anomalous": 0, "missing": 0}
    for rec in records:
        stem = f"{rec.camera}-{rec.id:08d}"
        src = root / rec.image
        if not src.is_file():  # evicted between the query and the copy
            counts["missing"] += 1
            continue
        if as_good or not rec.anomalous:
            shutil.copyfile(src, good_dir / f"{stem}.jpg")
            counts["train_good"] += 1
            continue
        shutil.copyfile(src, review / "anomalous" / f"{stem}.jpg")
        if rec.mask and (root / rec.mask).is_file():
            shutil.copyfile(root / rec.mask, review / "ground_truth" / "anomalous" / f"{stem}_mask.png")
        if (root / rec.result).is_file():
            shutil.copyfile(root / rec.result, review / "results" / f"{stem}.json")
        counts["review_anomalous"] += 1
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        root = store_dir(args)
        verdict = getattr(args, "verdict", None)
        records = query(root, args.camera, verdict, args.model, args.since, args.until, args.limit)
    except (FileNotFoundError, ValueError) as exc:
        print(f"edge-evidence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "list":
        list_records(records, args.json)
        return EXIT_OK
    try:
        counts = export(root, records, args.out, args.as_good)
    except OSError as exc:
        print(f"edge-evidence: export to {args.out} failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    summary = {"store": str(root), "out": str(args.out), **counts}
    (args.out / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"exported {counts['train_good']} good frame(s) to {args.out / 'train' / 'good'} and "
        f"{counts['review_anomalous']} anomalous one(s) to {args.out / 'review'} for review"
        + (f" ({counts['missing']} evicted meanwhile)" if counts["missing"] else "")
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
