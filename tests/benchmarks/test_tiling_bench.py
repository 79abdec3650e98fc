"""The generated small-defect set of ``edge-bench tiling``: defects of 6-24 px, masks that match them."""

from __future__ import annotations

import numpy as np

from benchmarks.tiling_bench import small_defect


def test_small_defects_are_small_and_their_masks_cover_the_change() -> None:
    rng = np.random.default_rng(0)
    base = np.full((300, 300, 3), 128, np.uint8)
    for _ in range(40):
        image, mask = small_defect(rng, base)
        ys, xs = np.nonzero(mask)
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        assert 4 <= extent <= 26
        changed = np.any(image != base, axis=2)
        assert np.array_equal(changed, mask > 0)
        assert np.abs(image.astype(int) - base)[mask > 0].min() >= 45


def test_every_option_main_reads_is_declared() -> None:
    """main() read args.max_candidates once without declaring it, and crashed on the first real set."""
    import re
    from pathlib import Path

    from benchmarks import tiling_bench

    source = Path(tiling_bench.__file__).read_text()
    used = set(re.findall(r"\bargs\.(\w+)", source))
    declared = vars(tiling_bench.parser().parse_args(["--out", "x"]))
    assert used and used <= set(declared), sorted(used - set(declared))
