"""The `fewcore plugins` and `fewcore info` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fewcore import cli


def test_plugins_json_lists_builtins_and_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert all(set(r) == {"kind", "name", "plugin", "distribution", "version"} for r in records)
    distributions = {r["distribution"] for r in records}
    assert {"fewcore", "fewcore-plugin-example"} <= distributions
    assert {"kind": "learner", "name": "nearest-neighbour"}.items() <= next(
        r for r in records if r["name"] == "nearest-neighbour"
    ).items()


def test_plugins_table_has_a_header_and_one_row_per_component(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["kind", "name", "plugin", "distribution", "version"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert cli.main(["plugins", "--json"]) == 0
    assert len(lines) - 2 == len(json.loads(capsys.readouterr().out))


def test_info_reports_active_ops_and_compiled_kernels(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ops"] == "compiled"
    assert data["extension_loaded"] is True, data["extension_error"]
    assert isinstance(data["cuda_kernels"], bool)
    if data["cuda_kernels"]:
        assert data["cuda_arch_list"]
    assert data["devices"][0] == "cpu"


def test_info_follows_fewcore_ops(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FEWCORE_OPS", "reference")
    assert cli.main(["info"]) == 0
    assert any(line.split() == ["ops", "reference"] for line in capsys.readouterr().out.splitlines())


def test_broken_plugin_gives_a_clean_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a user would: a real subprocess, a plugin that fails to import."""
    script = (
        "import sys, importlib.metadata as md; from fewcore import _plugins, cli\n"
        "ep = md.EntryPoint('bad', 'no_such_module_xyz', 'fewcore')\n"
        "_plugins._entry_points = lambda: [ep]\n"
        "sys.exit(cli.main(['plugins']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 2
    assert 'Error importing plugin "bad"' in result.stderr
    assert "FEWCORE_DISABLE_PLUGINS=bad" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_user_error_has_no_traceback_unless_debug_asks(tmp_path: Path) -> None:
    """Run as a user would, through ``python -m fewcore.cli``: the interpreter prints any traceback."""
    command = [sys.executable, "-m", "fewcore.cli", "train", str(tmp_path)]
    plain = subprocess.run(command, capture_output=True, text=True)
    assert plain.returncode == 2
    assert plain.stderr == f"fewcore train: error: config path {tmp_path} is a directory; give a TOML file\n"
    debug = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "FEWCORE_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr

