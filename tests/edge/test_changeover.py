"""Changeover pieces without a daemon: the model/set payload, recipe resolution, install-bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.commands import parse_model_set
from edge.stores.recipes import RecipeError, RecipeStore
from edge.trust.manifest import read_manifest
from tests.helpers.tiny_bundle import default_reference, make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"B", ("B", False)),
        (b"  cap-b \n", ("cap-b", False)),
        (b'"B"', ("B", False)),
        (b'{"recipe": "B"}', ("B", False)),
        (b'{"rollback": true}', (None, True)),
        (b"gtrans@0123456789ab", ("gtrans@0123456789ab", False)),
    ],
)
def test_model_set_payloads_accepted(payload: bytes, expected: tuple) -> None:
    assert parse_model_set(payload) == expected


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "recipe name"),
        (b"../A", "recipe name"),
        (b".hidden", "recipe name"),
        (b'{"recipe": "B", "force": true}', "unknown key"),
        (b'{"rollback": false}', "recipe name"),
        (b"{not json", "does not parse"),
        (b"\xff\xfe", "UTF-8"),
        (b"x" * 300, "at most 256"),
        (b"7", None),  # a number is a (strange) recipe name; the store says it does not exist
    ],
)
def test_model_set_payloads_refused(payload: bytes, why: str | None) -> None:
    if why is None:
        assert parse_model_set(payload) == ("7", False)
        return
    with pytest.raises(ValueError, match=why):
        parse_model_set(payload)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("store")
    make_tiny_bundle(root / "src" / "A", size=64)
    make_tiny_bundle(root / "src" / "B", size=64, reference=default_reference(64) + 20)
    return root


def test_recipes_resolve_by_name_or_bundle_id(bundles: Path) -> None:
    store = bundles / "store-1"
    shutil.copytree(bundles / "src" / "B", store / "B")
    (store / ".previous-B").mkdir()  # hidden folders are never recipes
    recipes = RecipeStore(store, bundles / "src" / "A")
    assert recipes.names() == ["A", "B"]
    assert recipes.resolve("A") == ("A", bundles / "src" / "A")
    b_id = read_manifest(store / "B").model_id()
    assert recipes.resolve(b_id) == ("B", store / "B")
    with pytest.raises(RecipeError, match="no recipe 'C'.*recipes: A, B"):
        recipes.resolve("C")
    with pytest.raises(RecipeError, match="no recipe holds bundle"):
        recipes.resolve("tiny-reference@000000000000")
    with pytest.raises(RecipeError):
        recipes.resolve(".previous-B")


def install_bundle_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.service.cli", "install-bundle", "--config", str(config), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def install(config: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    return install_bundle_cli(config, str(bundle), *extra)


def store_config(tmp_path: Path, bundles: Path) -> tuple[Path, Path]:
    """(store, config): a config whose model.bundle is recipe A and whose store is empty."""
    store, config = tmp_path / "store", tmp_path / "edge.toml"
    config.write_text(
        f'[model]\nbundle = "{bundles / "src" / "A"}"\nstore = "{store}"\n[[cameras]]\nname = "line"\nsource '
        f'= "0"\n'
    )
    return store, config


def test_install_bundle_verifies_copies_and_keeps_the_previous_version(bundles: Path, tmp_path: Path) -> None:
    store, config = store_config(tmp_path, bundles)
    first = install(config, bundles / "src" / "A", "--name", "cap")
    assert first.returncode == 0, first.stderr
    assert "systemctl reload" in first.stdout
    id_a = read_manifest(store / "cap").model_id()
    second = install(config, bundles / "src" / "B", "--name", "cap")  # a new version of the recipe
    assert second.returncode == 0, second.stderr
    assert read_manifest(store / "cap").model_id() != id_a
    assert read_manifest(store / ".previous-cap").model_id() == id_a
    assert not [p for p in store.iterdir() if p.name.startswith(".incoming")]

    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundles / "src" / "B", corrupt)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    manifest["precisions"]["fp32"]["sha256"] = "0" * 64
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    refused = install(config, corrupt, "--name", "cap")
    assert refused.returncode == 3 and "sha256" in refused.stderr
    assert read_manifest(store / "cap").model_id() != id_a  # the installed version is untouched
    assert sorted(p.name for p in store.iterdir()) == [".previous-cap", "cap"]

    no_store = tmp_path / "no-store.toml"
    no_store.write_text(
        f'[model]\nbundle = "{bundles / "src" / "A"}"\n[[cameras]]\nname = "x"\nsource = "0"\n'
    )
    assert install(no_store, bundles / "src" / "B").returncode == 3


def test_rollback_puts_back_the_replaced_version_and_a_second_one_undoes_it(
    bundles: Path, tmp_path: Path
) -> None:
    store, config = store_config(tmp_path, bundles)
    rollback = install_bundle_cli
    nothing = rollback(config, "--rollback", "cap")
    assert nothing.returncode == 3 and "no replaced version" in nothing.stderr
    assert install(config, bundles / "src" / "A", "--name", "cap").returncode == 0
    assert install(config, bundles / "src" / "B", "--name", "cap").returncode == 0
    id_a, id_b = read_manifest(store / ".previous-cap").model_id(), read_manifest(store / "cap").model_id()
    back = rollback(config, "--rollback", "cap")
    assert back.returncode == 0, back.stderr
    assert "rolled back" in back.stdout and "systemctl reload" in back.stdout
    assert read_manifest(store / "cap").model_id() == id_a
    assert read_manifest(store / ".previous-cap").model_id() == id_b
    assert rollback(config, "--rollback", "cap").returncode == 0  # and forward again
    assert read_manifest(store / "cap").model_id() == id_b
    # a kept version that no longer verifies is refused and nothing moves
    manifest = json.loads((store / ".previous-cap" / "manifest.json").read_text())
    manifest["precisions"]["fp32"]["sha256"] = "0" * 64
    (store / ".previous-cap" / "manifest.json").write_text(json.dumps(manifest))
    refused = rollback(config, "--rollback", "cap")
    assert refused.returncode == 3 and "sha256" in refused.stderr
    assert read_manifest(store / "cap").model_id() == id_b
    assert sorted(p.name for p in store.iterdir()) == [".previous-cap", "cap"]
    both = rollback(config, str(bundles / "src" / "A"), "--rollback", "cap")
    assert both.returncode == 2 and "not both" in both.stderr


def test_a_recipe_choice_is_kept_until_the_config_names_another(tmp_path: Path) -> None:
    from edge.stores.recipes import Choice, RecipeChoices

    path = tmp_path / "recipes.json"
    choices = RecipeChoices(path)
    choices.record("line", Choice("B", "A", "A", 1700000000.0, "mqtt"))
    again = RecipeChoices(path)  # a restart
    assert again.for_camera("line", "A") == Choice("B", "A", "A", 1700000000.0, "mqtt")
    assert again.for_camera("side", "A") is None
    assert again.for_camera("line", "C") is None  # the config was edited since: it wins, the choice goes
    assert RecipeChoices(path).for_camera("line", "A") is None
    path.write_text("{not json")
    assert RecipeChoices(path).for_camera("line", "A") is None  # a damaged record is ignored, not fatal
