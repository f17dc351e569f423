"""The commands as people run them: the CLI's log level, the stage scripts from the wrong
environment, and files written the same whatever the machine's locale."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import REPO, command_env, make_project, run
from typer.testing import CliRunner

from rakuten_classifier.cli import app
from rakuten_classifier.config import LOGGER_NAME


@pytest.mark.parametrize(
    ("environment", "option", "level"),
    [("WARNING", None, logging.WARNING), ("WARNING", "DEBUG", logging.DEBUG), (None, None, 20)],
    ids=["from-the-environment", "option-wins", "default-info"],
)
def test_the_log_level_comes_from_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment, option, level
) -> None:
    if environment:
        monkeypatch.setenv("RAKUTEN_LOG_LEVEL", environment)
    else:
        monkeypatch.delenv("RAKUTEN_LOG_LEVEL", raising=False)
    args = (["--log-level", option] if option else []) + ["metrics", "--path", str(tmp_path)]
    CliRunner().invoke(app, args)
    assert logging.getLogger(LOGGER_NAME).level == level


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python without the project's packages: what `python` is in a shell where the
    project's virtual environment is not active."""
    folder = tmp_path_factory.mktemp("bare")
    venv.EnvBuilder(with_pip=False).create(folder)
    return folder / "bin"


def test_a_stage_run_by_another_python_says_what_to_do(bare_python: Path) -> None:
    result = subprocess.run(
        [str(bare_python / "python"), "stages/import_raw.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "source .venv/bin/activate" in result.stderr
    assert "cannot import" in result.stderr


@pytest.mark.slow
def test_dvc_from_the_venv_in_a_shell_without_it_says_what_to_do(
    bare_python: Path, tmp_path: Path
) -> None:
    """`.venv/bin/dvc repro` typed in a shell whose `python` is another one: DVC runs the
    stage with that `python`, and the stage's message tells the user to activate the venv."""
    project = make_project(tmp_path)
    env = {**command_env(), "PATH": f"{bare_python}{os.pathsep}/usr/bin:/bin"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro", "import_raw"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "source .venv/bin/activate" in result.stdout + result.stderr


def test_json_files_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """Under a C locale without UTF-8 mode, Python's default encoding is ASCII."""
    target = tmp_path / "labels.json"
    code = (
        "import sys; from pathlib import Path; from rakuten_classifier.files import write_json;"
        "write_json(Path(sys.argv[1]), {'name': 'T\\u00e9l\\u00e9vision, d\\u00e9coration'})"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env["PYTHONCOERCECLOCALE"] = "0"
    run([sys.executable, "-X", "utf8=0", "-c", code, str(target)], tmp_path, env=env)
    assert json.loads(target.read_bytes().decode("utf-8")) == {"name": "Télévision, décoration"}
