"""Data paths in configs: found under --data-dir / FEWCORE_DATA, then beside the config; the error lists what was tried."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewcore.cli import main
from fewcore.paths import DATA_ENV, data_location, resolve_data_path


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A data folder, a config folder and an unrelated working directory, each with its own file."""
    made = {name: tmp_path / name for name in ("data", "configs", "elsewhere")}
    for folder in made.values():
        (folder / "sets").mkdir(parents=True)
        (folder / "sets" / "x.zip").write_bytes(b"")
    monkeypatch.chdir(made["elsewhere"])
    monkeypatch.delenv(DATA_ENV, raising=False)
    return made


def test_lookup_order_data_dir_then_environment_then_config_folder(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_path("sets/x.zip") == folders["elsewhere"] / "sets" / "x.zip"  # no config: the working directory
    with data_location(config_dir=folders["configs"]):
        assert resolve_data_path("sets/x.zip") == folders["configs"] / "sets" / "x.zip"
        monkeypatch.setenv(DATA_ENV, str(folders["data"]))
        assert resolve_data_path("sets/x.zip") == folders["data"] / "sets" / "x.zip"
        with data_location(data_dir=folders["elsewhere"], config_dir=folders["configs"]):  # --data-dir beats the variable
            assert resolve_data_path("sets/x.zip") == folders["elsewhere"] / "sets" / "x.zip"
        # Not in the data folder: the config's folder is still tried.
        (folders["data"] / "sets" / "x.zip").unlink()
        assert resolve_data_path("sets/x.zip") == folders["configs"] / "sets" / "x.zip"
    absolute = folders["data"] / "sets"
    assert resolve_data_path(absolute) == absolute


def test_a_missing_path_names_every_place_tried(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    with data_location(config_dir=folders["configs"]), pytest.raises(FileNotFoundError) as caught:
        resolve_data_path("sets/missing.zip")
    message = str(caught.value)
    assert f"{folders['configs'] / 'sets' / 'missing.zip'} (relative to the config file's folder)" in message
    assert f"set {DATA_ENV} (or pass fewcore --data-dir)" in message
    monkeypatch.setenv(DATA_ENV, str(folders["data"]))
    with pytest.raises(FileNotFoundError, match=rf"{folders['data'] / 'sets' / 'missing.zip'} \(under {DATA_ENV}\)"):
        resolve_data_path("sets/missing.zip")


def test_cli_resolves_a_config_root_beside_the_config_and_under_data_dir(
    folders: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = folders["configs"] / "run.toml"
    config.write_text('[dataset]\nname = "folder"\nroot = "images"\n[backbone]\nname = "conv4"\n[learner]\nname = "protonet"\n')
    assert main(["train", str(config), "--run-dir", str(folders["elsewhere"] / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"data path images not found: tried {folders['configs'] / 'images'} (relative to the config file's folder)" in err
    assert main(["--data-dir", str(folders["data"]), "train", str(config), "--no-progress"]) == 2
    assert f"{folders['data'] / 'images'} (under --data-dir)" in capsys.readouterr().err
