"""The experiment workflow of docs/experiments.md, for real: a queued sweep run by a DVC queue
worker, `dvc exp show`, the report between two experiments, `dvc exp apply` / `dvc exp branch`,
and the experiment-reading notebook on the result."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, PipelineRun, committed_copy, execute_notebook, run

from rakuten_classifier.report import experiments_table

METHODS = {"weighted", "stacking"}
QUEUE_DEADLINE_S = 900


def wait_for_queue(root: Path) -> str:
    """Until the queue has nothing queued or running; returns the last `dvc queue status`."""
    deadline = time.monotonic() + QUEUE_DEADLINE_S
    while True:
        status = run(["dvc", "queue", "status"], root).stdout
        if "Queued" not in status and "Running" not in status:
            return status
        assert time.monotonic() < deadline, f"queue still busy:\n{status}"
        time.sleep(5)


@pytest.fixture(scope="module")
def swept_project(tmp_path_factory: pytest.TempPathFactory, pipeline_run: PipelineRun) -> Path:
    """The session's run committed, then a two-point sweep of the fusion method queued and run
    by one queue worker. folds=0 keeps each experiment to train_fusion and predict."""
    root = committed_copy(pipeline_run.root, tmp_path_factory.mktemp("sweep") / "project")
    queued = run(
        [
            "dvc",
            "exp",
            "run",
            "--queue",
            "-S",
            "train_fusion.method=weighted,stacking",
            "-S",
            "train_fusion.folds=0",
        ],
        root,
    )
    assert queued.stdout.count("Queued experiment") == 2, queued.stdout
    run(["dvc", "queue", "start", "-j", "1"], root)
    status = wait_for_queue(root)
    assert status.count("Success") == 2, status
    return root


@pytest.fixture(scope="module")
def experiments(swept_project: Path) -> pd.DataFrame:
    table = experiments_table(swept_project)
    return table[table["kind"] == "experiment"].set_index("train_fusion.method")


def test_exp_show_lists_both_experiments_with_their_metrics(
    experiments: pd.DataFrame, swept_project: Path
) -> None:
    assert set(experiments.index) == METHODS
    assert (experiments["state"] == "success").all()
    assert (experiments["train_fusion.folds"] == 0).all()
    head = run(["git", "rev-parse", "HEAD"], swept_project).stdout.strip()
    assert (experiments["baseline"] == head).all()
    for column in ("fusion.f1_weighted", "text.accuracy", "image.f1_macro"):
        values = experiments[f"metrics/test.json:{column}"]
        assert values.between(0, 1).all(), column
    # The documented comparison command: changed columns only, sorted by the metric.
    shown = run(
        [
            "dvc",
            "exp",
            "show",
            "--only-changed",
            "--sort-by",
            "metrics/test.json:fusion.f1_weighted",
            "--csv",
        ],
        swept_project,
    ).stdout
    header = shown.splitlines()[0].split(",")
    assert "train_fusion.method" in header and "seed" not in header
    assert all(name in shown for name in experiments["name"])


def test_report_between_the_two_experiments(experiments: pd.DataFrame, swept_project: Path) -> None:
    weighted, stacking = experiments.at["weighted", "name"], experiments.at["stacking", "name"]
    out = swept_project / "reports" / "fusion-method"
    args = ["rakuten-classifier", "report", "--baseline", weighted, "--target", stacking]
    run([*args, "--out", str(out)], swept_project)
    markdown = (out / "report.md").read_text()
    assert markdown.startswith(f"# {stacking} compared with {weighted}")
    assert (
        f"- baseline: {weighted} (experiment {experiments.at['weighted', 'rev'][:7]})" in markdown
    )
    assert '| `train_fusion.method` | `"weighted"` | `"stacking"` |' in markdown
    assert f"| model | metric | {weighted} (baseline) | {stacking} | change |" in markdown
    # Both ran on the same test split, and their scores are the ones each experiment committed.
    assert "test splits differ" not in markdown
    for method, name in (("weighted", weighted), ("stacking", stacking)):
        committed = json.loads(
            run(
                ["git", "show", f"{experiments.at[method, 'rev']}:metrics/test.json"], swept_project
            ).stdout
        )
        assert f"{committed['fusion']['f1_weighted']:.4f}" in markdown, name
    assert (out / "report.html").exists() and (out / "confusion_fusion_target.png").exists()


def test_experiments_notebook_reads_the_sweep(swept_project: Path) -> None:
    notebook = execute_notebook(
        REPO / "notebooks" / "read_experiments.ipynb", {"RAKUTEN_PROJECT_DIR": str(swept_project)}
    )
    text = "\n".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "")
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    assert "params that differ: train_fusion.folds, train_fusion.method" in text
    assert "2 experiments, 1 commits" in text
    figures = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert figures, "no metric-vs-param plot"


def test_apply_and_branch_keep_an_experiment(
    experiments: pd.DataFrame, swept_project: Path
) -> None:
    stacking = experiments.at["stacking", "name"]
    run(["dvc", "exp", "branch", stacking, "fusion-stacking"], swept_project)
    branch_params = yaml.safe_load(
        run(["git", "show", "fusion-stacking:params.yaml"], swept_project).stdout
    )
    assert branch_params["train_fusion"]["method"] == "stacking"

    run(["dvc", "exp", "apply", stacking], swept_project)
    params = yaml.safe_load((swept_project / "params.yaml").read_text())
    assert params["train_fusion"] == {**params["train_fusion"], "method": "stacking", "folds": 0}
    applied = json.loads((swept_project / "metrics/test.json").read_text())
    committed = run(
        ["git", "show", f"{experiments.at['stacking', 'rev']}:metrics/test.json"], swept_project
    )
    assert applied == json.loads(committed.stdout)
    fusion = json.loads((swept_project / "models/fusion/fusion.json").read_text())
    assert fusion["method"] in ("stacking", "text_only")
    # The applied experiment is now the workspace: `dvc status` has nothing to rerun.
    assert "up to date" in run(["dvc", "status"], swept_project).stdout
