"""Datasets: MVTec layout, plain folders, broken layouts, preprocessing, split and fingerprint."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from edge.capture.preprocess import Preprocess
from training.data import (
    DatasetError,
    ImageFolderDataset,
    MVTecCategory,
    TestItem,
    fingerprint,
    good_images,
    list_images,
    load_images,
    load_test_set,
    read_image,
    read_mask,
    split_train_val,
)

PRE = Preprocess(height=64, width=64)


@pytest.fixture
def dataset_copy(synthetic_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the session dataset that a test may break."""
    return Path(shutil.copytree(synthetic_dataset, tmp_path / "parts"))


# ---- MVTec layout -------------------------------------------------------------------------------------


def test_category_lists_the_generated_layout(synthetic_dataset: Path) -> None:
    cat = MVTecCategory(synthetic_dataset)
    assert cat.name == "parts"
    assert cat.root == synthetic_dataset
    assert len(cat.train_images()) == 48
    assert cat.defect_types == ["blob", "scratch"]
    items = cat.test_items()
    assert [i.defect_type for i in items] == ["good"] * 8 + ["blob"] * 4 + ["scratch"] * 4
    for item in items:
        assert item.is_anomalous == (item.defect_type != "good")
        if item.is_anomalous:
            assert (
                item.mask_path
                == synthetic_dataset / "ground_truth" / item.defect_type / f"{item.path.stem}_mask.png"
            )
        else:
            assert item.mask_path is None


def test_load_test_set_shapes_labels_and_masks(synthetic_dataset: Path) -> None:
    images, masks, labels, types, paths = load_test_set(MVTecCategory(synthetic_dataset), PRE)
    assert images.shape == (16, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (16, 64, 64) and masks.dtype == bool
    assert labels.tolist() == [0] * 8 + [1] * 8
    assert types == ["good"] * 8 + ["blob"] * 4 + ["scratch"] * 4
    assert len(paths) == 16 and all(p.is_file() for p in paths)
    defect_pixels = masks.reshape(16, -1).sum(axis=1)
    assert (defect_pixels[:8] == 0).all()
    assert (defect_pixels[8:] > 0).all()
    # A path works as well as an MVTecCategory and gives the same arrays.
    images2, masks2, *_ = load_test_set(synthetic_dataset, PRE)
    np.testing.assert_array_equal(images, images2)
    np.testing.assert_array_equal(masks, masks2)


def test_masks_line_up_with_the_defects_they_mark(synthetic_dataset: Path) -> None:
    """Blobs are pasted as a flat colour far from the part's texture; the mask must cover exactly those."""
    item = next(i for i in MVTecCategory(synthetic_dataset).test_items() if i.defect_type == "blob")
    full = Preprocess(height=128, width=128, color_order="BGR")  # the generated size: no resampling
    image = read_image(item.path, full)
    mask = read_mask(item.mask_path, full)
    raw = cv2.imread(str(item.mask_path), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(mask, raw > 0)
    inside = image[mask].astype(int)
    assert np.ptp(inside, axis=0).max() <= 3  # one flat colour inside the mask (PNG is lossless)


def test_missing_dataset_folder_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=str(missing)):
        MVTecCategory(missing)
    with pytest.raises(DatasetError, match=str(missing)):
        good_images(missing)


def test_missing_train_and_test_folders_name_the_path(dataset_copy: Path) -> None:
    shutil.rmtree(dataset_copy / "train")
    shutil.rmtree(dataset_copy / "test")
    cat = MVTecCategory(dataset_copy)
    with pytest.raises(DatasetError, match=str(dataset_copy / "train" / "good")):
        cat.train_images()
    with pytest.raises(DatasetError, match=str(dataset_copy / "test")):
        cat.test_items()


def test_missing_mask_names_the_expected_mask(dataset_copy: Path) -> None:
    mask = dataset_copy / "ground_truth" / "scratch" / "002_mask.png"
    mask.unlink()
    with pytest.raises(DatasetError) as err:
        MVTecCategory(dataset_copy).test_items()
    assert str(mask) in str(err.value)
    assert str(dataset_copy / "test" / "scratch" / "002.png") in str(err.value)


def test_corrupt_png_names_the_file(dataset_copy: Path) -> None:
    bad = dataset_copy / "test" / "blob" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    with pytest.raises(DatasetError, match=str(bad)):
        read_image(bad, PRE)
    with pytest.raises(DatasetError, match=str(bad)):
        load_test_set(MVTecCategory(dataset_copy), PRE)


def test_corrupt_mask_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "000_mask.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=str(bad)):
        read_mask(bad, PRE)


# ---- folders and images ---------------------------------------------------------------------------------


def test_list_images_sorted_and_filtered(tmp_path: Path) -> None:
    png = cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes()
    for name in ("b.png", "a.JPG", "c.bmp", ".hidden.png"):
        (tmp_path / name).write_bytes(png)  # list_images goes by suffix; it does not decode
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.bmp"]


def test_list_images_rejects_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"{tmp_path / 'missing'} does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=f"{tmp_path / 'empty'} contains no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not a folder"):
        list_images(tmp_path / "empty" / "readme.txt")


def test_good_images_from_mvtec_layout_or_plain_folder(synthetic_dataset: Path, tmp_path: Path) -> None:
    assert good_images(synthetic_dataset) == list_images(synthetic_dataset / "train" / "good")
    plain = tmp_path / "good_parts"
    plain.mkdir()
    for i in range(3):
        cv2.imwrite(str(plain / f"{i}.png"), np.full((30, 40, 3), i * 50, np.uint8))
    assert [p.name for p in good_images(plain)] == ["0.png", "1.png", "2.png"]


def test_read_image_resizes_and_orders_channels(tmp_path: Path) -> None:
    path = tmp_path / "blue.png"
    bgr = np.zeros((100, 50, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR
    cv2.imwrite(str(path), bgr)
    rgb = read_image(path, PRE)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert rgb[32, 32].tolist() == [0, 0, 255]
    as_bgr = read_image(path, Preprocess(height=32, width=48, color_order="BGR"))
    assert as_bgr.shape == (32, 48, 3)
    assert as_bgr[10, 10].tolist() == [255, 0, 0]


def test_read_image_accepts_grayscale_files(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), np.full((64, 64), 77, np.uint8))
    assert read_image(path, PRE)[5, 5].tolist() == [77, 77, 77]


def test_read_mask_nearest_resize_stays_binary(tmp_path: Path) -> None:
    path = tmp_path / "m_mask.png"
    mask = np.zeros((128, 256), np.uint8)
    mask[:, :128] = 255  # left half defective
    cv2.imwrite(str(path), mask)
    out = read_mask(path, PRE)
    assert out.shape == (64, 64) and out.dtype == bool
    assert out[:, :32].all() and not out[:, 32:].any()
    empty = read_mask(None, PRE)
    assert empty.shape == (64, 64) and empty.dtype == bool and not empty.any()


def test_test_item_is_anomalous() -> None:
    assert not TestItem(Path("a.png"), "good", None).is_anomalous
    assert TestItem(Path("a.png"), "crack", Path("a_mask.png")).is_anomalous


# ---- split and fingerprint ------------------------------------------------------------------------------


def _names(n: int) -> list[Path]:
    return [Path(f"/data/good/{i:03d}.png") for i in range(n)]


def test_split_is_deterministic_sorted_and_complete() -> None:
    paths = _names(48)
    train, val = split_train_val(paths, val_fraction=0.1, seed=0)
    assert len(val) == 5 and len(train) == 43
    assert train == sorted(train) and val == sorted(val)
    assert sorted(train + val) == paths
    # The same images in another order, or listed again, split the same way.
    assert split_train_val(list(reversed(paths)), 0.1, 0) == (train, val)
    assert split_train_val(paths, 0.1, 0) == (train, val)
    # Another seed picks other validation images.
    assert split_train_val(paths, 0.1, 1)[1] != val


def test_split_keeps_at_least_one_on_each_side() -> None:
    assert split_train_val(_names(1), 0.1) == (_names(1), [])
    train, val = split_train_val(_names(2), 0.1)
    assert len(train) == 1 and len(val) == 1
    train, val = split_train_val(_names(3), 0.9)
    assert len(train) == 1 and len(val) == 2
    assert split_train_val(_names(5), 0.0) == (_names(5), [])


def test_split_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(_names(4), 1.0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(_names(4), -0.1)
    with pytest.raises(DatasetError, match="no images"):
        split_train_val([], 0.1)


def test_fingerprint_tracks_names_and_sizes_not_location(synthetic_dataset: Path, tmp_path: Path) -> None:
    original = good_images(synthetic_dataset)
    copy = Path(shutil.copytree(synthetic_dataset / "train" / "good", tmp_path / "elsewhere" / "good"))
    base = fingerprint(original)
    assert len(base) == 64 and int(base, 16) >= 0
    assert fingerprint(list_images(copy)) == base  # moved: same
    assert fingerprint(list(reversed(original))) == base  # order does not matter
    assert fingerprint(original[:-1]) != base  # one image fewer
    (copy / "000.png").rename(copy / "999.png")
    assert fingerprint(list_images(copy)) != base  # renamed
    (copy / "999.png").rename(copy / "000.png")
    with open(copy / "001.png", "ab") as f:
        f.write(b"\0")
    assert fingerprint(list_images(copy)) != base  # size changed


def test_fingerprint_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.png"
    with pytest.raises(DatasetError, match=str(missing)):
        fingerprint([missing])


# ---- torch dataset and in-memory loading ----------------------------------------------------------------


def test_image_folder_dataset_matches_load_images(synthetic_dataset: Path) -> None:
    paths = good_images(synthetic_dataset)[:6]
    cached = load_images(paths, PRE)
    assert cached.shape == (6, 64, 64, 3) and cached.dtype == np.uint8
    ds = ImageFolderDataset(paths, PRE)
    assert len(ds) == 6
    item = ds[2]
    assert isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.shape == (64, 64, 3)
    np.testing.assert_array_equal(item.numpy(), cached[2])
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch.shape == (4, 64, 64, 3) and batch.dtype == torch.uint8
    np.testing.assert_array_equal(batch.numpy(), cached[:4])


def test_load_images_with_progress_and_empty_input(
    synthetic_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = good_images(synthetic_dataset)[:3]
    np.testing.assert_array_equal(load_images(paths, PRE, progress=True), load_images(paths, PRE))
    assert "loading images" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="no images"):
        load_images([], PRE)
    with pytest.raises(DatasetError, match="at least one image"):
        ImageFolderDataset([], PRE)


# ---- the real MVTec AD bottle (skipped when ../shared is absent) ----------------------------------------


@pytest.mark.mvtec
def test_mvtec_bottle_layout(mvtec_bottle: Path) -> None:
    cat = MVTecCategory(mvtec_bottle)
    assert len(cat.train_images()) == 209
    assert cat.defect_types == ["broken_large", "broken_small", "contamination"]
    items = cat.test_items()
    assert len(items) == 83
    assert sum(i.is_anomalous for i in items) == 63
    first_defect = next(i for i in items if i.is_anomalous)
    mask = read_mask(first_defect.mask_path, Preprocess())
    assert mask.shape == (256, 256) and 0 < mask.mean() < 0.5
