"""Choose the kNN model's settings on visible data: held-out good images and pasted defects only.

    python -m training.knn_sweep --data ../shared/data/mvtec-bottle/bottle --out runs/sweep/bottle.json

For one category: the same training/held-out split ``edge-train`` makes, defects pasted onto the held-out
good images (``training.pasted_defects``), both teachers' features computed once, then every combination
of teacher (effnet / vit / both with each fusion), bank size (full, and greedy coresets from every patch)
and image score (max, top-k means) scored with image AUROC, pixel AUROC, AUPRO and the line protocol's
recall (threshold from the held-out good images). The test split is never read. Models are the real
``PatchCore`` class: only the banks are swapped between settings.

``--defects cutpaste,small`` scores every setting on both defect sets (``pasted_defects.defect_set``);
``--decide`` then ranks fused candidates (bank pair, ViT weight, image score) from the saved maps by the
shortfall rule docs/accuracy.md states.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration.scores import normalization_from_good
from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from training.data import good_images, load_images, split_train_val
from training.metrics import line_operating_points, probe_metrics
from training.models.memory_bank import PCA_SAMPLE, NearestBank, StreamedCoreset, coverage, pca_basis
from training.models.patchcore import PatchCore, PatchCoreConfig
from training.pasted_defects import defect_set
from training.train import images_to_tensor

SIZE = 224
SCORES = [("max", 0.01), ("topk", 0.01), ("topk", 0.001)]  # image scores swept and decided among


def _features(teacher: torch.nn.Module, x: torch.Tensor, batch: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([teacher(x[i : i + batch]) for i in range(0, len(x), batch)])


def _bank(train_f: torch.Tensor, rows: int, metric: str, seed: int = 0, pca: int = 0) -> NearestBank:
    """A bank of ``rows`` coreset rows (0: every patch), in ``pca`` principal components when > 0."""
    dim = train_f.shape[1]
    bank = NearestBank(0, dim, metric, project_to=pca)
    patches = train_f.permute(0, 2, 3, 1).reshape(-1, dim)
    if pca:
        sample = torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))[:PCA_SAMPLE]
        bank.set_projection(*pca_basis(patches[sample], pca))
    stream = StreamedCoreset(pca or dim, 64, seed)
    per_batch = train_f.shape[2] * train_f.shape[3] * 16
    for i in range(0, len(patches), per_batch):
        stream.add(bank.project(patches[i : i + per_batch]))
    chosen = stream.rows(rows)
    stream.close()
    bank.set_bank(chosen)
    return bank


def raw_maps_path(sweep_json: Path, defects: str, n_sets: int) -> Path:
    """Where a sweep saves its raw per-teacher maps: beside its JSON, ``-raw.npz``, with ``-<set>`` before
    the suffix when it scored more than one defect set."""
    return sweep_json.with_name(sweep_json.stem + "-raw" + (f"-{defects}" if n_sets > 1 else "") + ".npz")


def bank_spec(spec: str) -> tuple[int, int]:
    """'8192x96' -> (8192 rows, 96 principal components); '1024' -> (1024, 0); '0' is every patch."""
    rows, _, pca = spec.partition("x")
    return int(rows), int(pca or 0)


def _metrics(model: PatchCore, raw: list[torch.Tensor], labels, masks) -> dict[str, Any]:
    """Score ``raw`` per-teacher maps (N, 1, h, w) with ``model``'s head, fusion and image score."""
    with torch.no_grad():
        maps = [model.head(r)[1] for r in raw]
        if len(maps) == 1:
            amap = maps[0]
        else:
            good = torch.from_numpy(labels == 0)
            norm = []
            for m in maps:  # calibration.scores: median 0, q99 1 over the held-out good images
                n = normalization_from_good(model.image_score(m[good]).numpy())
                norm.append((m - n.offset) / n.scale)
            amap = model.fuse_maps(norm)
        score, amap = model.score_map(amap)
    s, a = score.numpy(), amap.numpy()
    line = line_operating_points(s[labels == 0], labels, s)
    return {**probe_metrics(labels, s, masks, a), "recall_01": line["0.001"]["recall"]}


def _fused_metrics(
    pair: list[torch.Tensor],
    fusion: str,
    score: str,
    frac: float,
    labels,
    masks,
    vit_weight: float = PatchCoreConfig.vit_weight,
) -> dict[str, Any]:
    """Metrics of the two teachers' raw maps fused as the model would (``backbone="both"``, full banks)."""
    cfg = PatchCoreConfig(
        image_size=SIZE,
        backbone="both",
        fusion=fusion,
        score=score,
        topk_fraction=frac,
        bank_size=0,
        vit_bank_size=0,
        vit_weight=vit_weight,
    )
    return _metrics(PatchCore(cfg), pair, labels, masks)


def sweep(
    data: Path,
    banks: dict[str, list[str]],
    scores: list[tuple[str, float]],
    log,
    maps_beside: Path | None = None,
    defects: tuple[str, ...] = ("cutpaste",),
    fusions: tuple[str, ...] = ("mean", "max", "shift"),
) -> dict[str, Any]:
    """Every setting on every defect set; runs carry their set's name (``defects``), raw maps are saved
    per set beside ``maps_beside`` (the sweep's JSON path; ``raw_maps_path``)."""
    torch.manual_seed(0)
    pre = Preprocess(
        height=SIZE, width=SIZE, color_order="RGB", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="letterbox"
    )
    train_paths, val_paths = split_train_val(good_images(data), 0.1, 0)
    x_train = images_to_tensor(load_images(train_paths, pre), pre)
    sets = {name: defect_set(name, val_paths, pre) for name in defects}  # 3 a good image, seed 0
    x_eval = {name: images_to_tensor(s[0], pre) for name, s in sets.items()}
    model = PatchCore(PatchCoreConfig(image_size=SIZE, backbone="both", bank_size=0, vit_bank_size=0)).eval()
    model.load_pretrained()
    out: dict[str, Any] = {
        "data": str(data),
        "n_train": len(train_paths),
        "n_good": len(val_paths),
        "defects": list(defects),
        "runs": [],
    }
    raw: dict[tuple[str, str, str], torch.Tensor] = {}
    for name, (teacher, search) in zip(model.teachers, model.parts(), strict=True):
        t = time.perf_counter()
        f_train = _features(teacher, x_train)
        f_eval = {d: _features(teacher, x) for d, x in x_eval.items()}
        out[f"{name}_feature_seconds"] = time.perf_counter() - t
        log(f"{data.name} {name}: features {tuple(f_train.shape)} in {out[f'{name}_feature_seconds']:.0f} s")
        for spec in banks[name]:
            rows, pca = bank_spec(spec)
            t = time.perf_counter()
            bank = _bank(f_train, rows, search.metric, pca=pca)
            build = time.perf_counter() - t
            for d, (_, masks, labels, _types) in sets.items():
                fe = f_eval[d]
                with torch.no_grad():
                    raw[(d, name, spec)] = torch.cat([bank(fe[i : i + 2]) for i in range(0, len(fe), 2)])
                    cov = coverage(bank, [fe[torch.from_numpy(labels == 0)]])
                log(f"  {d}: bank {spec} ({len(bank.bank)} rows) built {build:.0f} s, good coverage {cov}")
                for score, frac in scores:
                    cfg = PatchCoreConfig(
                        image_size=SIZE,
                        backbone=name,
                        bank_size=0,
                        vit_bank_size=0,
                        score=score,
                        topk_fraction=frac,
                    )
                    m = _metrics(PatchCore(cfg), [raw[(d, name, spec)]], labels, masks)
                    out["runs"].append(
                        {
                            "defects": d,
                            "teacher": name,
                            "bank": rows,
                            "pca": pca,
                            "score": score,
                            "topk": frac,
                            **m,
                            "coverage": cov,
                            "build_s": build,
                        }
                    )
                    log(f"    {d} {name} bank {spec} {score} {frac}: {m}")
    for d, (_, masks, labels, types) in sets.items():
        if maps_beside is not None:  # for trying other fusions later without the teachers
            np.savez_compressed(
                raw_maps_path(maps_beside, d, len(sets)),
                labels=labels,
                masks=masks,
                types=np.array(types),
                **{f"{name}_{spec}": r.numpy() for (dd, name, spec), r in raw.items() if dd == d},
            )
        for rows_e, rows_v in itertools.product(banks["effnet"], banks["vit"]):
            for fusion in fusions:
                for score, frac in scores:
                    pair = [raw[(d, "effnet", rows_e)], raw[(d, "vit", rows_v)]]
                    m = _fused_metrics(pair, fusion, score, frac, labels, masks)
                    out["runs"].append(
                        {
                            "defects": d,
                            "teacher": f"both-{fusion}",
                            "bank": [rows_e, rows_v],
                            "score": score,
                            "topk": frac,
                            **m,
                        }
                    )
                    log(f"    {d} both-{fusion} banks {rows_e}/{rows_v} {score} {frac}: {m}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--table", type=Path, nargs="+", help="print a markdown table of these sweep JSONs and exit"
    )
    p.add_argument(
        "--refuse", type=Path, help="a sweep's -raw.npz: score other fusions of its maps (--fusions)"
    )
    p.add_argument("--fusions", default="mean,max")
    p.add_argument(
        "--decide", type=Path, nargs="+", help="sweep JSONs: rank fused candidates by the shortfall rule"
    )
    p.add_argument("--weights", default="0.5,0.625,0.75,0.875,1.0", help="ViT weights for --decide")
    p.add_argument("--effnet-banks", default="0,16384,4096", help="bank rows; ROWSxPCA: projected")
    p.add_argument("--vit-banks", default="0,4096,1024,8192x96", help="as --effnet-banks; 0 is every patch")
    p.add_argument(
        "--defects", default="cutpaste", help="defect sets, comma-separated: cutpaste (large) and/or small"
    )
    p.add_argument(
        "--sweep-fusions",
        default="mean,max,shift",
        help="fusions of the two teachers scored in the sweep ('' for none: --decide fuses the saved maps)",
    )
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    if args.table:
        print(table(args.table), end="")
        return 0
    if args.decide:
        weights = [float(w) for w in args.weights.split(",")]
        for r in decide(args.decide, weights, SCORES):
            print(json.dumps(r))
        return 0
    if args.refuse:
        rows = refuse(args.refuse, args.fusions.split(","), [("max", 0.01), ("topk", 0.01)])
        for r in rows:
            print(json.dumps(r))
        return 0
    if args.data is None or args.out is None:
        p.error("--data and --out are needed (or --table)")
    if args.threads:
        torch.set_num_threads(args.threads)
    banks = {"effnet": args.effnet_banks.split(","), "vit": args.vit_banks.split(",")}
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    fusions = tuple(f for f in args.sweep_fusions.split(",") if f)
    result = sweep(args.data, banks, SCORES, log, args.out, tuple(args.defects.split(",")), fusions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def refuse(raw_path: Path, fusions: list[str], scores: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Score fusions of the raw maps a sweep saved (no teacher runs): one row per bank pair, fusion, score."""
    raw = np.load(raw_path)
    labels, masks = raw["labels"], raw["masks"]
    maps = {k: torch.from_numpy(raw[k]) for k in raw.files if k.startswith(("effnet_", "vit_"))}
    rows = []
    pairs = [(e, v) for e in maps if e.startswith("effnet_") for v in maps if v.startswith("vit_")]
    for e, v in pairs:
        for fusion in fusions:
            for score, frac in scores:
                m = _fused_metrics([maps[e], maps[v]], fusion, score, frac, labels, masks)
                rows.append({"teacher": f"both-{fusion}", "bank": [e, v], "score": score, "topk": frac, **m})
    return rows


RULE_METRICS = ("image_auroc", "pixel_auroc", "aupro", "recall_1")


def decide(paths: list[Path], weights: list[float], scores: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """The decision rule over sweep JSONs and their saved maps: each candidate (bank pair, ViT weight, image
    score; weight 1 is the ViT alone) scored on every category and defect set, and its shortfall below the
    better plain full-bank kNN (max score) summed over the four ``RULE_METRICS``. Smallest sum first."""
    totals: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        sets = data.get("defects", ["cutpaste"])
        for d in sets:
            yard = [
                r
                for r in data["runs"]
                if r.get("defects", "cutpaste") == d
                and r["teacher"] in ("effnet", "vit")
                and r["bank"] == 0
                and r["score"] == "max"
            ]
            if not yard:
                raise ValueError(f"{path}: no full-bank max-score runs on {d} to measure shortfall against")
            best = {m: max(r[m] for r in yard) for m in RULE_METRICS}
            raw = np.load(raw_maps_path(Path(path), d, len(sets)))
            labels, masks = raw["labels"], raw["masks"]
            effnet = [k for k in raw.files if k.startswith("effnet_") and k != "effnet_0"]
            vit = [k for k in raw.files if k.startswith("vit_") and k != "vit_0"]
            for e, v, w, (score, frac) in itertools.product(effnet, vit, weights, scores):
                pair = [torch.from_numpy(raw[e]), torch.from_numpy(raw[v])]
                m = _fused_metrics(pair, "mean", score, frac, labels, masks, vit_weight=w)
                short = sum(max(0.0, best[k] - m[k]) for k in RULE_METRICS)
                key = (e, v, w, score, frac)
                row = totals.setdefault(
                    key, {"effnet": e, "vit": v, "vit_weight": w, "score": score, "topk": frac, "sum": 0.0}
                )
                row["sum"] += short
                row[f"{Path(data['data']).name}/{d}"] = {
                    **{k: m[k] for k in RULE_METRICS},
                    "shortfall": short,
                }
    return sorted(totals.values(), key=lambda r: r["sum"])


def table(paths: list[Path]) -> str:
    """Markdown of sweep JSONs: one row per (category, teacher, bank, score)."""

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [
        "| category | teacher | bank rows | image score | image AUROC | pixel AUROC | AUPRO | line recall "
        "@ 1 % "
        "| line recall @ 0.1 % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        data = json.loads(Path(path).read_text())
        name = Path(data["data"]).name
        for r in data["runs"]:
            bank = (
                "/".join("full" if str(b) == "0" else str(b) for b in r["bank"])
                if isinstance(r["bank"], list)
                else (r["bank"] or "full")
                if not r.get("pca")
                else f"{r['bank'] or 'full'}x{r['pca']}"
            )
            score = "max" if r["score"] == "max" else f"top {r['topk']:.1%} mean"
            lines.append(
                f"| {name} | {r['teacher']} | {bank} | {score} | {f(r['image_auroc'])} | "
                f"{f(r['pixel_auroc'])} "
                f"| {f(r['aupro'])} | {f(r['recall_1'])} | {f(r['recall_01'])} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
