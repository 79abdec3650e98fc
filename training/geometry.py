"""Choose a bundle's input geometry (letterbox or stretch) from its own good images, before training.

Parts cropped by an upstream locator vary in size and aspect ratio. Letterboxing keeps shapes but moves the
content border (and with it the patches that see padding) from image to image; stretching keeps every
border in place but distorts, differently per image. Which costs less depends on the product, so
``edge-train --geometry auto`` (the default) measures it on the data it is given, never on a test split:

1. If every good image already has the model input's aspect ratio, the two geometries are the same
   resize: letterbox, nothing measured.
2. Otherwise a cheap probe (the kNN kind with the EfficientNet-Lite0 teacher and a small coreset, the
   fastest model here; the geometry is a property of the framing, not of the model) is fitted once per
   geometry on the training images and scored on the held-out good images plus defects pasted onto them
   **in their own frame** (``training.pasted_defects.paste_defect``), so both geometries see the same
   defects. Pixel metrics are computed in one frame for both (each map cropped to where the image landed
   and resized to the model's square), so padding counts for neither.
3. Stretch is chosen only when the sum of its image AUROC, pixel AUROC, AUPRO and line recall at 1 % false
   alarms beats letterbox's by more than ``MARGIN`` (stated before any data was looked at: letterbox
   keeps a thin crack thin, so it wins a tie).
4. Native-scale tiles (``docs/tiling.md``) are the third option, for images much larger than the model
   input: a whole-image resize shrinks a defect of a few pixels away. Where the largest scale at which every
   image fits in ``MAX_TILES`` tiles sees the part at least ``TILE_GAIN`` times finer than the whole-image
   resize does, the same probe is fitted on tiles and on whole images (of up to ``TILES_PROBE_IMAGES``
   training images), and both are scored on the held-out good images with CutPaste defects, small drawn
   ones (``training.small_defects``) and large faint ones (``training.uneven_defects``: a tile sees less
   of a shading than the whole image does), all at the images' own size, every map brought back to it
   (``training.native_eval``). Tiles are chosen only when the sum of the four metrics over the three sets
   beats the whole image's by more than ``TILES_MARGIN`` (a tie keeps one pass a frame). Only
   training-free kinds are offered tiles: for a trained model they multiply every epoch. A tiled kNN's
   bank rows then grow with its tiles a frame (``tiled_banks``).

The choice and the measurements are recorded in the checkpoint (``data.geometry``); the manifest carries
the chosen resize (and tiling) and the daemon follows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edge.capture.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from edge.capture.tiling import Tiling
from training.checkpoint import model_settings
from training.data import load_samples
from training.evaluate import content_scores
from training.metrics import probe_metrics
from training.native_eval import read_bgr
from training.pasted_defects import paste_each
from training.small_defects import small_each
from training.uneven_defects import uneven_each

GEOMETRIES = ("letterbox", "stretch")
CHOICES = ("auto", *GEOMETRIES)
MARGIN = 0.02  # stretch must beat letterbox by this much on the sum of the four metrics
PROBE_BANK = 2048  # EfficientNet coreset rows of the probe: small, the comparison is relative
PER_IMAGE = 3  # pasted defects per held-out good image, as edge-eval --pasted
TILED_BANK_KINDS = ("patchcore",)  # the kinds whose bank rows grow with the tiles a frame (tiled_banks)
BANK_KEYS = ("bank_size", "vit_bank_size")
MAX_BANK_GROWTH = 4  # the most a tiled bank grows (measured at 4): the search cost follows the rows
MAX_TILES = 4  # model passes a frame may cost when tiles win (edge-train --max-tiles)
TILE_GAIN = 1.5  # tiles are offered when they see the part at least this much finer than the whole image
TILES_MARGIN = 0.06  # tiles must beat the whole image by this on the sum of 3 sets x 4 metrics (0.005 each)
METRIC_SIDE = 512  # the native-frame metrics are computed with the long side at most this (cost)
TILES_PROBE_IMAGES = 100  # training images the tiles probe fits on (evenly spaced): its cost stays minutes
TILES_PROBE_PIXELS = 250_000_000  # native pixels of the probe's defect sets together (memory: x3 bytes)
# The defect sets both probes (tiles here, the fusion weight and image cue in training.fusion_weight) score
PROBE_SETS = {"cutpaste": paste_each, "small": small_each, "uneven": uneven_each}


def preprocess(size: int, resize: str, tiling: Tiling | None = None) -> Preprocess:
    return Preprocess(
        height=size,
        width=size,
        color_order="RGB",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resize=resize,
        tiling=tiling,
    )


def tiled_banks(
    kind: str, model_config: dict[str, Any], tiles_per_frame: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A tiled kNN bundle's bank rows: each default size times the tiles a training frame gives (rounded,
    at most ``MAX_BANK_GROWTH``), so a row stands for as many training patches as in a whole-image bundle
    (on DeepPCB's held-out defects the coverage lost to 4x the patches had cost pixel AUROC and AUPRO:
    docs/accuracy.md, Banks on tiles). Sizes asked for with ``--set`` and full banks (0) stay as they are.
    Returns the config to build the model from and what was done (empty when nothing was)."""
    factor = min(MAX_BANK_GROWTH, max(1, round(tiles_per_frame)))
    if factor == 1 or kind not in TILED_BANK_KINDS:
        return model_config, {}
    settings = model_settings(kind, model_config)
    grown = {
        key: getattr(settings, key) * factor
        for key in BANK_KEYS
        if key not in model_config and getattr(settings, key) > 0
    }
    if not grown:
        return model_config, {}
    rows = ", ".join(f"{k} {v // factor} -> {v}" for k, v in grown.items())
    reason = f"banks: {rows} ({factor}x for {tiles_per_frame:.3g} tiles a frame, at most {MAX_BANK_GROWTH}x)"
    return {**model_config, **grown}, {"tiles_per_frame": factor, **grown, "reason": reason}


def image_sizes(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """(height, width) of every image (cv2 reads the header and the pixels; paid once, before training)."""
    return [read_bgr(Path(p)).shape[:2] for p in paths]


def native_pasted(
    paths: Sequence[Path], seed: int = 0, per_image: int = PER_IMAGE
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]]:
    """The held-out good images and defects pasted onto each **in its own frame** (BGR, sizes differ)."""
    return paste_each([read_bgr(Path(p)) for p in paths], per_image, seed)


def to_model_frame(maps: np.ndarray, sizes: Sequence[tuple[int, int]], pre: Preprocess) -> np.ndarray:
    """Each (S, S) map cropped to where its image landed and resized back to (S, S): one frame for any
    geometry (stretch maps pass unchanged)."""
    out = np.empty_like(maps)
    for i, (amap, (h, w)) in enumerate(zip(maps, sizes, strict=True)):
        x, y, cw, ch = pre.content_box(h, w)
        out[i] = cv2.resize(amap[y : y + ch, x : x + cw], (pre.width, pre.height), cv2.INTER_LINEAR)
    return out


def fit_probe(pre: Preprocess, train_paths: Sequence[Path], seed: int = 0) -> Any:
    """The probe (EfficientNet kNN, ``PROBE_BANK`` rows) fitted on the training images under ``pre``."""
    from training.models.patchcore import PatchCore, PatchCoreConfig
    from training.train import NormalizedView

    model = PatchCore(PatchCoreConfig(image_size=pre.height, backbone="effnet", bank_size=PROBE_BANK)).eval()
    model.load_pretrained()
    model.fit(NormalizedView(load_samples(train_paths, pre), pre), seed=seed)
    return model


def score_geometry(
    resize: str,
    size: int,
    train_paths: Sequence[Path],
    pasted: tuple[list[np.ndarray], list[np.ndarray], np.ndarray, list[str]],
    seed: int = 0,
) -> dict[str, float | None]:
    """The probe fitted on ``train_paths`` under one geometry, scored on the native pasted set."""
    from training.train import images_to_tensor

    pre = preprocess(size, resize)
    model = fit_probe(pre, train_paths, seed)
    images, masks, labels, _ = pasted
    sizes = [im.shape[:2] for im in images]
    x = images_to_tensor(np.stack([pre.frame_to_input(im) for im in images]), pre)
    with torch.no_grad():
        maps = torch.cat([model(x[i : i + 16])[1] for i in range(0, len(x), 16)]).numpy()
    scores = content_scores(maps, sizes, pre)  # the maximum where the image landed, as the daemon scores
    square = np.stack([cv2.resize(m.astype(np.uint8), (size, size), cv2.INTER_NEAREST) for m in masks])
    return probe_metrics(labels, scores, square > 0, to_model_frame(maps, sizes, pre))


def auto_tiling(sizes: Sequence[tuple[int, int]], tile: int, max_tiles: int = MAX_TILES) -> Tiling | None:
    """The tiling with the largest scale (<= 1, in hundredths) at which every image fits in ``max_tiles``
    tiles of ``tile`` px (overlap tile/7, 32 px at 224), or None when that scale is not ``TILE_GAIN`` times
    the whole-image resize's (``tile`` over the largest side)."""
    if max_tiles < 2:
        return None
    whole = tile / max(max(h, w) for h, w in sizes)
    shapes = set(sizes)
    for hundredths in range(100, 0, -1):
        scale = hundredths / 100
        if scale < TILE_GAIN * whole:
            return None
        tiling = Tiling(tile, tile // 7, scale)
        if all(len(tiling.grid(h, w)) <= max_tiles for h, w in shapes):
            return tiling
    return None


def native_defect_sets(
    val_paths: Sequence[Path], seed: int = 0, sizes: Sequence[tuple[int, int]] | None = None
) -> dict[str, tuple]:
    """The held-out good images with CutPaste defects, small drawn ones and large faint ones, at their own
    size (``PROBE_SETS``).

    The sets are held in memory (10 copies of each image): beyond ``TILES_PROBE_PIXELS`` native pixels in
    all, an evenly spaced subset of the held-out images is used (large camera frames). ``sizes``: the
    images' (height, width) when already read."""
    paths = list(val_paths)
    pixels = sum(h * w for h, w in (image_sizes(paths) if sizes is None else sizes)) * (1 + 3 * PER_IMAGE)
    step = max(1, -(-pixels // TILES_PROBE_PIXELS))  # ceil
    frames = [read_bgr(Path(p)) for p in paths[::step]]
    return {name: draw(frames, PER_IMAGE, seed) for name, draw in PROBE_SETS.items()}


def score_native(model: Any, pre: Preprocess, labelled: tuple) -> dict[str, float | None]:
    """A fitted probe scored on one native defect set: its four metrics, in one frame (``in_frame``)."""
    from training.graph import InferenceModel
    from training.native_eval import native_map

    wrapped = InferenceModel(model, pre).eval()
    maps = (native_map(wrapped, pre, image) for image in labelled[0])
    scores, frame_maps, frame_masks = in_frame(maps, labelled)
    return probe_metrics(labelled[2], scores, frame_masks, frame_maps)


def in_frame(
    maps: Iterable[np.ndarray], labelled: tuple, max_side: int = METRIC_SIDE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores as the daemon's (each native map's maximum) and the maps and masks in one frame (the largest
    image's shape, long side at most ``max_side``), from maps taken one at a time: camera frames are large."""
    from training.native_eval import metric_frame, to_frame

    images, masks = labelled[0], labelled[1]
    frame = metric_frame([im.shape for im in images], max_side)
    scores = np.empty(len(images), np.float32)
    small = np.empty((len(images), *frame), np.float32)
    frame_masks = np.empty((len(images), *frame), bool)
    for i, amap in enumerate(maps):
        scores[i] = float(amap.max())
        small[i], frame_masks[i] = to_frame(amap, masks[i], frame)
    return scores, small, frame_masks


def sets_line(by_set: dict[str, dict[str, float | None]]) -> str:
    """One probe candidate's metrics on each defect set, for the training log."""
    return "; ".join(
        f"{d} " + " ".join(f"{k} {v:.3f}" for k, v in m.items() if v is not None) for d, m in by_set.items()
    )


def sets_sum(by_set: dict[str, dict[str, float | None]]) -> float:
    """The sum a probe decides by: every metric of every defect set (a metric that is None counts 0)."""
    return sum(v for m in by_set.values() for v in m.values() if v is not None)


def choose_tiles(
    resize: str,
    tiling: Tiling,
    size: int,
    train_paths: Sequence[Path],
    val_paths: Sequence[Path],
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
    val_sizes: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Whole image (``resize``) or ``tiling``, by ``TILES_MARGIN`` on the two native defect sets
    (``val_sizes``: the held-out images' sizes when already read)."""
    log(
        f"geometry: probing {resize} against {tiling.tile} px tiles at scale {tiling.scale:g} "
        f"on {len(val_paths)} held-out images with pasted, small and faint defects"
    )
    sets = native_defect_sets(val_paths, seed, val_sizes)
    step = max(1, -(-len(train_paths) // TILES_PROBE_IMAGES))  # ceil: at most TILES_PROBE_IMAGES
    fit_paths = list(train_paths)[::step]
    probe: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, pre in (("whole", preprocess(size, resize)), ("tiles", preprocess(size, resize, tiling))):
        model = fit_probe(pre, fit_paths, seed)
        with torch.no_grad():
            probe[name] = {d: score_native(model, pre, labelled) for d, labelled in sets.items()}
        log(f"geometry: {name}: {sets_line(probe[name])}")
    total = {n: sets_sum(probe[n]) for n in probe}
    gain = total["tiles"] - total["whole"]
    chosen = gain > TILES_MARGIN
    reason = f"tiles {'beat' if chosen else 'did not beat'} the whole image ({resize}) by more than "
    reason += f"{TILES_MARGIN} (difference {gain:+.3f})"
    log(f"geometry: {'tiles' if chosen else resize} ({reason})")
    return {"tiling": tiling.to_dict() if chosen else None, "tiles_reason": reason, "tiles_probe": probe}


def choose_geometry(
    train_paths: Sequence[Path],
    val_paths: Sequence[Path],
    size: int,
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
    max_tiles: int = 1,
) -> dict[str, Any]:
    """``{"resize": ..., "reason": ..., "probe": {geometry: metrics}}`` for these good images; with
    ``max_tiles`` > 1 also ``"tiling"`` (None: whole images) and the tiles probe's measurements."""
    sizes = image_sizes([*train_paths, *val_paths])
    chosen = choose_resize(sizes, train_paths, val_paths, size, seed, log)
    tiling = auto_tiling(sizes, size, max_tiles)
    if tiling is None:
        return chosen
    if len(val_paths) < 2:
        return {**chosen, "tiling": None, "tiles_reason": "fewer than 2 held-out good images to measure on"}
    val_sizes = sizes[len(train_paths) :]  # read once above, not again for the pixel budget
    tiles = choose_tiles(chosen["resize"], tiling, size, train_paths, val_paths, seed, log, val_sizes)
    return {**chosen, **tiles}


def choose_resize(
    sizes: Sequence[tuple[int, int]],
    train_paths: Sequence[Path],
    val_paths: Sequence[Path],
    size: int,
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Letterbox or stretch (steps 1-3 of the module's docstring)."""
    if all(h == w for h, w in sizes):
        return {"resize": "letterbox", "reason": "every image is square like the input: the geometries agree"}
    if len(val_paths) < 2:
        return {
            "resize": "letterbox",
            "reason": "fewer than 2 held-out good images: nothing to measure on (letterbox keeps shapes)",
        }
    log(f"geometry: not every image is square; probing letterbox vs stretch on {len(val_paths)} held-out")
    pasted = native_pasted(val_paths, seed)
    probe = {g: score_geometry(g, size, train_paths, pasted, seed) for g in GEOMETRIES}
    total = {g: sum(v for v in probe[g].values() if v is not None) for g in GEOMETRIES}
    for g in GEOMETRIES:
        log(f"geometry: {g}: " + " ".join(f"{k} {v:.3f}" for k, v in probe[g].items() if v is not None))
    if total["stretch"] > total["letterbox"] + MARGIN:
        reason = f"stretch beat letterbox by {total['stretch'] - total['letterbox']:.3f} (> {MARGIN})"
        chosen = "stretch"
    else:
        reason = f"stretch did not beat letterbox by more than {MARGIN} (difference "
        reason += f"{total['stretch'] - total['letterbox']:+.3f})"
        chosen = "letterbox"
    log(f"geometry: {chosen} ({reason})")
    return {"resize": chosen, "reason": reason, "probe": probe}
