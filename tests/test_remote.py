"""The committed DVC remote used for real: `dvc push` / `dvc pull` of data and models and
`dvc exp push` / `dvc exp pull` of experiments against an S3 server started on 127.0.0.1 (moto),
set up exactly as docs/data-and-remote.md tells a new user: the committed `storage` remote,
its endpoint and credentials in the git-ignored .dvc/config.local or in the environment."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from conftest import REPO, PipelineRun, make_project, run
from services import KEY_ID, SECRET, point_remote_at

from rakuten_classifier.files import sha256_file

# Every DVC output of the pipeline, compared file by file between the two clones.
OUTPUTS = (
    "data/raw",
    "data/processed",
    "data/features",
    "data/predictions",
    "models",
    "metrics",
    "plots",
    "dvclive",
)
EXPERIMENT = "fusion-stacking"


def output_files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): sha256_file(path)
        for folder in OUTPUTS
        for path in sorted((root / folder).rglob("*"))
        # The predict stage's measured times are this machine's: git-ignored, not pushed.
        if path.is_file() and path.name != "timing.json"
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, pipeline_run: PipelineRun, s3_endpoint):
    """The session's pipeline run as a project with the committed remote configuration, pushed
    (git to a bare repository, data and models to S3); and a fresh clone of it, pulled."""
    base = tmp_path_factory.mktemp("remote")
    server, origin, clone = base / "server.git", base / "origin", base / "clone"
    shutil.copytree(pipeline_run.root, origin, symlinks=True)
    shutil.copy2(REPO / ".dvc" / "config", origin / ".dvc" / "config")
    point_remote_at(origin, s3_endpoint)
    for key, value in (("access_key_id", KEY_ID), ("secret_access_key", SECRET)):
        run(["dvc", "remote", "modify", "--local", "storage", key, value], origin)
    run(["git", "add", "-A"], origin)
    run(["git", "commit", "-q", "-m", "pipeline run"], origin)
    run(["git", "init", "-q", "--bare", "-b", "main", str(server)], base)
    run(["git", "remote", "add", "origin", str(server)], origin)
    run(["git", "push", "-q", "origin", "main"], origin)
    pushed = run(["dvc", "push"], origin)

    run(["git", "clone", "-q", str(server), str(clone)], base)
    point_remote_at(clone, s3_endpoint)
    # The clone's credentials come from the environment instead of the local config.
    credentials = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    pulled = run(["dvc", "pull"], clone, env=credentials)
    return {
        "origin": origin,
        "clone": clone,
        "credentials": credentials,
        "pushed": pushed.stdout,
        "pulled": pulled.stdout,
    }


def test_credentials_stay_out_of_git(shared) -> None:
    origin = shared["origin"]
    assert SECRET in (origin / ".dvc" / "config.local").read_text()
    tracked = run(["git", "ls-files"], origin).stdout.splitlines()
    assert ".dvc/config" in tracked and ".dvc/config.local" not in tracked
    found = run(["git", "grep", "-I", "-l", SECRET, "HEAD"], origin, check=False)
    assert found.returncode == 1, found.stdout


def test_pull_into_a_fresh_clone_restores_every_output_identically(shared) -> None:
    origin, clone = shared["origin"], shared["clone"]
    assert "pushed" in shared["pushed"] and "added" in shared["pulled"]
    expected = output_files(origin)
    assert "data/raw/images.zip" in expected
    assert "models/bundle/manifest.json" in expected
    assert output_files(clone) == expected


def test_the_pulled_clone_has_nothing_to_reproduce(shared) -> None:
    clone = shared["clone"]
    assert "up to date" in run(["dvc", "status"], clone).stdout
    assert "Running stage" not in run(["dvc", "repro"], clone).stdout


def test_experiment_pushed_from_one_clone_is_pulled_and_applied_in_another(shared) -> None:
    origin, clone, credentials = shared["origin"], shared["clone"], shared["credentials"]
    # folds=0: the fusion learns on the validation split alone (seconds, not minutes).
    run(
        [
            "dvc",
            "exp",
            "run",
            "-n",
            EXPERIMENT,
            "-S",
            "train_fusion.method=stacking",
            "-S",
            "train_fusion.folds=0",
        ],
        origin,
    )
    run(["dvc", "exp", "push", "origin", EXPERIMENT], origin)

    run(["dvc", "exp", "pull", "origin", EXPERIMENT], clone, env=credentials)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout)
    assert EXPERIMENT in json.dumps(shown)
    # Applying it needs its outputs from the cache: `exp pull` fetched them from the remote.
    run(["dvc", "exp", "apply", EXPERIMENT], clone)
    assert "up to date" in run(["dvc", "status"], clone).stdout
    fusion = json.loads((clone / "models/fusion/fusion.json").read_text())
    assert fusion["method"] in ("stacking", "text_only")
    assert output_files(clone) == output_files(origin)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_full_data_run_without_network_fails_with_what_to_do(tmp_path: Path) -> None:
    """The one command for the full data set, on a machine that cannot reach the data: the
    import stage stops at once with the URL, the cause and the remedy, leaving no data."""
    root = make_project(tmp_path)
    base_url = f"http://127.0.0.1:{closed_port()}/"
    result = run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "data.source=huggingface",
            "-S",
            f"data.hf_base_url={base_url}",
        ],
        root,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"Could not download {base_url}X_train_update.csv" in output
    assert "connection failed" in output and "data.hf_base_url" in output
    assert "download the file manually" in output
    assert "Traceback" not in output  # the message alone, not buried under a stack trace
    assert "Running stage 'make_dataset'" not in output
    assert not (root / "data" / "raw").exists()
    leftovers = [path.name for path in (root / "data").iterdir() if path.name.startswith(".")]
    assert all(name == ".download_cache" for name in leftovers), leftovers
    assert not any((root / "data" / ".download_cache").iterdir())
