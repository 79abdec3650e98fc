"""``edge-evidence``: read the evidence store the daemon keeps (see :mod:`edge.stores.evidence`).

    edge-evidence list   --dir /var/lib/edge-anomaly/evidence [--camera line] [--verdict anomalous] [--json]
    edge-evidence export --config /etc/edge-anomaly/config.toml --out product-b [--camera line] [--model ID]

``export`` writes an MVTec-layout folder that ``edge-train --data`` accepts: good frames go to
``train/good/``; anomalous ones go to ``review/anomalous/`` with the model's masks in
``review/ground_truth/anomalous/<stem>_mask.png`` and their results in ``review/results/``, for a person to
confirm before any of them becomes test data. Exit codes: 0 ok, 2 bad arguments or no store, 1 other error
(a corrupt index, or rows refused by export).

It trusts no name in the index: a file the index names outside the store, or a camera name that would make
a file outside ``--out``, is refused with one line and counted, never copied. It runs as the service user
(``sudo -u edge-anomaly edge-evidence …``): as root it refuses a store that root does not own, whose index
the service account could have edited to make root read or write what it cannot.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from edge.stores.evidence_index import INDEX_NAME, Record, query
from edge.stores.evidence_names import UnsafeName, camera_folder, inside

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
    """Copy ``records`` into ``out`` in MVTec layout; returns counts per destination (``refused``: rows
    whose names lead outside the store or outside ``out``, each said on stderr)."""
    good_dir = out / "train" / "good"
    review = out / "review"
    folders = (good_dir, review / "anomalous", review / "ground_truth" / "anomalous", review / "results")
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    counts = {"train_good": 0, "review_anomalous": 0, "missing": 0, "refused": 0}
    for rec in records:
        try:
            copies = _copies(root, rec, out, as_good)
        except UnsafeName as exc:
            print(f"edge-evidence: refused index row {rec.id} (was it edited?): {exc}", file=sys.stderr)
            counts["refused"] += 1
            continue
        if not copies[0][0].is_file():  # evicted between the query and the copy
            counts["missing"] += 1
            continue
        for src, dest in copies:
            if src.is_file():
                shutil.copyfile(src, dest)
        counts["train_good" if as_good or not rec.anomalous else "review_anomalous"] += 1
    return counts


def _copies(root: Path, rec: Record, out: Path, as_good: bool) -> List[Tuple[Path, Path]]:
    """(source inside the store, destination inside ``out``) pairs of one row; UnsafeName otherwise."""
    stem = f"{camera_folder(rec.camera)}-{int(rec.id):08d}"  # UnsafeName unless a camera (or region) name
    if as_good or not rec.anomalous:
        pairs = [(rec.image, f"train/good/{stem}.jpg")]
    else:
        pairs = [(rec.image, f"review/anomalous/{stem}.jpg"), (rec.result, f"review/results/{stem}.json")]
        if rec.mask:
            pairs.append((rec.mask, f"review/ground_truth/anomalous/{stem}_mask.png"))
    return [(inside(root, src), inside(out, dest)) for src, dest in pairs]


def refuse_root_on_a_foreign_store(root: Path) -> Optional[str]:
    """Why root must not read this store (another user owns it and could have edited its index), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    index = root / INDEX_NAME
    try:
        owner = os.stat(index if index.exists() else root).st_uid
    except OSError:
        return None
    if owner == 0:
        return None
    return (
        f"refusing to run as root on {root}, which uid {owner} owns (its index could name any file): run "
        "edge-evidence as that user, e.g. sudo -u edge-anomaly edge-evidence ..."
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        root = store_dir(args)
        refusal = refuse_root_on_a_foreign_store(root)
        if refusal is not None:
            print(f"edge-evidence: {refusal}", file=sys.stderr)
            return EXIT_USAGE
        verdict = getattr(args, "verdict", None)
        records = query(root, args.camera, verdict, args.model, args.since, args.until, args.limit)
    except (FileNotFoundError, ValueError) as exc:
        print(f"edge-evidence: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except sqlite3.DatabaseError as exc:
        print(
            f"edge-evidence: the index {root / INDEX_NAME} cannot be read ({exc}); the daemon moves a "
            "corrupt index aside and rebuilds it from the kept files at its next start (systemctl restart "
            "edge-anomaly)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if args.command == "list":
        list_records(records, args.json)
        return EXIT_OK
    try:
        counts = export(root, records, args.out, args.as_good)
    except OSError as exc:
        print(f"edge-evidence: export to {args.out} failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    summary = {"store": str(root), "out": str(args.out), **counts}
    if counts["refused"]:
        print(f"edge-evidence: {counts['refused']} row(s) refused (see above)", file=sys.stderr)
    (args.out / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"exported {counts['train_good']} good frame(s) to {args.out / 'train' / 'good'} and "
        f"{counts['review_anomalous']} anomalous one(s) to {args.out / 'review'} for review"
        + (f" ({counts['missing']} evicted meanwhile)" if counts["missing"] else "")
    )
    return EXIT_ERROR if counts["refused"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
