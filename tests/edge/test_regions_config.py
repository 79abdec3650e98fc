"""[[cameras]] regions: valid regions expand into inspection units named <camera>/<region>; every mistake is
one error naming the field, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config
from edge.config.regions import flat_name, unit_of_flat
from edge.faces.mqtt_json.topics import TOPICS, camera_of, region_filter, topic_name_of
from edge.service.cli import EXIT_CONFIG, main
from tests.helpers.tiny_bundle import make_tiny_bundle

pytestmark = pytest.mark.usefixtures("clean_env")

HEAD = '[model]\nbundle = "/nonexistent/bundle"\n[[cameras]]\nname = "cam0"\nsource = "0"\n'


def regions_toml(*regions: str, extra: str = "") -> str:
    return HEAD + extra + "".join(f"[[cameras.regions]]\n{r}\n" for r in regions)


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "edge.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_regions_expand_into_units_with_the_camera_settings_they_leave_out(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        regions_toml(
            'name = "label"\nroi = [0, 0, 100, 80]\nthreshold = 2.5\npublish_mask = "always"',
            'name = "cap"\nroi = [120, 10, 60, 60]',
            extra="warn_band = 0.2\nfps = 5\n",
        ),
    )
    units = config.enabled_cameras()
    assert [u.name for u in units] == ["cam0/label", "cam0/cap"]
    label, cap = units
    assert label.roi == (0, 0, 100, 80) and label.threshold == 2.5 and label.publish_mask == "always"
    assert cap.roi == (120, 10, 60, 60) and cap.threshold is None and cap.publish_mask == "anomalous"
    assert label.warn_band == cap.warn_band == 0.2 and label.fps == cap.fps == 5  # the camera's
    assert label.source == cap.source == "0"
    assert [c.name for c in config.cameras] == ["cam0"]  # the section itself is one camera


def test_a_camera_without_regions_is_its_own_unit(tmp_path: Path) -> None:
    config = load(tmp_path, HEAD + "roi = [1, 2, 30, 40]\n")
    assert config.enabled_cameras() == config.cameras


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        (
            regions_toml('name = "a"\nroi = [0, 0, 10, 10]', 'name = "a"\nroi = [10, 0, 10, 10]'),
            "cameras[0].regions",
            "'a' is used twice",
        ),
        (regions_toml('name = "a/b"\nroi = [0, 0, 10, 10]'), "cameras[0].regions[0].name", "not topic-safe"),
        (regions_toml('name = "x y"\nroi = [0, 0, 10, 10]'), "cameras[0].regions[0].name", "not topic-safe"),
        (regions_toml('name = "result"\nroi = [0, 0, 10, 10]'), "cameras[0].regions[0].name", "reserved"),
        (regions_toml('name = "Threshold"\nroi = [0, 0, 10, 10]'), "cameras[0].regions[0].name", "reserved"),
        (
            regions_toml('name = "a"\nroi = [0, 0, 10, 10]', extra="roi = [0, 0, 5, 5]\n"),
            "cameras[0].regions",
            "regions and roi exclude each other",
        ),
        (regions_toml('name = "a"\nroi = [0, 0, 0, 10]'), "cameras[0].regions[0].roi", "w, h >= 1"),
        (regions_toml('name = "a"'), "cameras[0].regions[0].roi", "Field required"),
        (regions_toml('name = "a"\nroi = [0, 0, 1, 1]\nfsp = 3'), "cameras[0].regions[0].fsp", "unknown key"),
        (
            regions_toml('name = "a"\nroi = [0, 0, 1, 1]\nrecipe = "other"'),
            "(top level)",
            "cameras cam0/a name a recipe but model.store is not set",
        ),
    ],
)
def test_a_bad_region_is_one_error_naming_the_field(tmp_path: Path, text: str, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, text)
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{field}: ") and says in lines[0], lines[0]


def test_a_bad_region_stops_edge_run_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(regions_toml('name = "mask"\nroi = [0, 0, 10, 10]'), encoding="utf-8")
    assert main(["--config", str(path)]) == EXIT_CONFIG
    assert "cameras[0].regions[0].name: region name 'mask' is reserved" in capsys.readouterr().err


def test_parts_name_regions_not_their_camera(tmp_path: Path) -> None:
    text = regions_toml('name = "a"\nroi = [0, 0, 10, 10]', 'name = "b"\nroi = [10, 0, 10, 10]')
    config = load(tmp_path, text + '[[parts]]\nname = "p"\ncameras = ["cam0/a", "cam0/b"]\n')
    assert config.parts[0].cameras == ["cam0/a", "cam0/b"]
    with pytest.raises(ConfigError, match="names camera 'cam0', which is not an enabled camera"):
        load(tmp_path, text + '[[parts]]\nname = "p"\ncameras = ["cam0"]\n')


def test_command_topics_of_a_region_name_the_unit() -> None:
    assert camera_of("cam0/label/threshold/set", TOPICS["threshold_set"]) == "cam0/label"
    assert camera_of("cam0/threshold/set", TOPICS["threshold_set"]) == "cam0"
    assert camera_of("cam0/label/trigger", TOPICS["trigger"]) == "cam0/label"
    assert camera_of("cam0/label/model/set", TOPICS["model_set"]) == "cam0/label"
    assert camera_of("a/b/c/threshold/set", TOPICS["threshold_set"]) is None
    assert camera_of("cam0//threshold/set", TOPICS["threshold_set"]) is None
    assert topic_name_of("cam0/label/result") == "result"
    assert topic_name_of("cam0/label/mask/run-3") == "mask"
    assert region_filter(TOPICS["threshold_set"]) == "+/+/threshold/set"
    assert region_filter(TOPICS["status"]) == "status"


def test_flat_names_for_faces_that_cannot_hold_a_slash() -> None:
    assert flat_name("cam0/label") == "cam0:label" and unit_of_flat("cam0:label") == "cam0/label"
    assert flat_name("cam0") == "cam0" and unit_of_flat("cam0") == "cam0"


def test_check_config_names_a_region_recipe_by_its_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = make_tiny_bundle(tmp_path / "bundle", size=32)
    (tmp_path / "store").mkdir()
    text = regions_toml(
        'name = "a"\nroi = [0, 0, 10, 10]', 'name = "b"\nroi = [10, 0, 10, 10]\nrecipe = "gone"'
    )
    text = text.replace(
        'bundle = "/nonexistent/bundle"', f'bundle = "{bundle}"\nstore = "{tmp_path / "store"}"'
    )
    path = tmp_path / "edge.toml"
    path.write_text(text, encoding="utf-8")
    assert main(["--config", str(path), "--check-config", "--no-camera-open"]) != 0
    err = capsys.readouterr().err
    assert "FAILED  cameras[0].regions[1].recipe (cam0/b): no recipe 'gone'" in err, err
