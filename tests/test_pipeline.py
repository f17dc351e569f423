"""The DVC pipeline run for real (`dvc repro`) on a slice of the sample, in a temporary git
repository: outputs, metrics, caching, parameter changes and experiments."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import PipelineRun, committed_copy, run, set_params

STAGES = (
    "import_raw",
    "make_dataset",
    "tokenize",
    "train_text",
    "image_features",
    "train_image",
    "train_fusion",
    "predict",
)


def test_every_stage_ran_and_wrote_its_outputs(pipeline_run: PipelineRun) -> None:
    root = pipeline_run.root
    for stage in STAGES:
        assert f"Running stage '{stage}'" in pipeline_run.output
    for path in (
        "data/raw/X_train_update.csv",
        "data/processed/train.parquet",
        "models/tokenizer",
        "models/text/text_model.json",
        "models/image/model.keras",
        "models/fusion/fusion.json",
        "models/bundle/manifest.json",
        "plots/confusion_fusion.png",
        "plots/per_class_f1.png",
        "plots/training_curves.png",
        "metrics/per_class.csv",
        "data/predictions/predictions.csv",
    ):
        assert (root / path).exists(), path
    assert (root / "dvc.lock").exists()


def test_metrics_cover_each_model_with_scores_and_timings(pipeline_run: PipelineRun) -> None:
    metrics = json.loads((pipeline_run.root / "metrics/test.json").read_text())
    timing = json.loads((pipeline_run.root / "metrics/timing.json").read_text())
    for model in ("text", "image", "fusion"):
        scores = metrics[model]
        for key in ("accuracy", "f1_weighted", "f1_macro"):
            assert 0.0 <= scores[key] <= 1.0
        # Times are this machine's: in a git-ignored file, never in a DVC output.
        assert not {key for key in scores if key.startswith("ms_")}
        assert timing[model]["ms_per_product_batch"] > 0
        assert timing[model]["ms_per_product_single"] > 0
    test = pd.read_parquet(pipeline_run.root / "data/processed/test.parquet")
    assert metrics["text"]["n"] == metrics["fusion"]["n"] == len(test)
    assert metrics["image"]["n"] == int(test["has_image"].sum())
    shown = run(["dvc", "metrics", "show", "--json"], pipeline_run.root).stdout
    assert "f1_weighted" in shown


def test_unlabelled_predictions_cover_every_test_product(pipeline_run: PipelineRun) -> None:
    predictions = pd.read_csv(pipeline_run.root / "data/predictions/predictions.csv", index_col=0)
    unlabelled = pd.read_csv(pipeline_run.root / "data/slice/X_test_update.csv", index_col=0)
    assert list(predictions.columns) == ["prdtypecode", "probability"]
    assert list(predictions.index) == list(unlabelled.index)
    labels = json.loads((pipeline_run.root / "data/processed/labels.json").read_text())
    assert set(predictions["prdtypecode"]) <= set(labels["codes"])
    assert predictions["probability"].between(0, 1).all()


def test_fusion_is_never_below_text_on_held_out_predictions(pipeline_run: PipelineRun) -> None:
    fusion = json.loads((pipeline_run.root / "models/fusion/fusion.json").read_text())
    held_out = fusion["validation"]["held_out"]
    assert held_out["fusion_f1_weighted"] >= held_out["text_f1_weighted"]


def test_fusion_scores_are_logged_under_the_rows_they_come_from(pipeline_run: PipelineRun) -> None:
    """held_out: validation and out-of-fold rows together; val: the validation split alone."""
    logged = json.loads((pipeline_run.root / "dvclive/train_fusion/metrics.json").read_text())
    test = pd.read_parquet(pipeline_run.root / "data/processed/val.parquet")
    train = pd.read_parquet(pipeline_run.root / "data/processed/train.parquet")
    assert logged["val"]["products"] == len(test)
    assert logged["held_out"]["products"] == len(test) + len(train)
    assert set(logged["val"]) == {"text_f1_weighted", "fusion_f1_weighted", "products"}


def test_a_truncated_photo_leaves_its_product_to_the_text(pipeline_run: PipelineRun) -> None:
    """The slice holds a photo whose header is intact and whose body is cut: make_dataset
    decodes it, flags it, and every stage after runs with the product text-only."""
    frames = [
        pd.read_parquet(pipeline_run.root / f"data/processed/{split}.parquet")
        for split in ("train", "val", "test")
    ]
    labelled = pd.concat(frames)
    broken = labelled[labelled["image_problem"].fillna("missing") != "missing"]
    assert len(broken) == 1
    assert not broken["has_image"].iloc[0]
    assert "cannot decode" in broken["image_problem"].iloc[0]
    assert (pipeline_run.root / "models/bundle/manifest.json").exists()


def test_second_repro_with_nothing_changed_does_nothing(pipeline_run: PipelineRun) -> None:
    result = run(["dvc", "repro"], pipeline_run.root)
    assert "Running stage" not in result.stdout
    status = run(["dvc", "status"], pipeline_run.root).stdout
    assert "up to date" in status


@pytest.fixture(scope="module")
def changed_project(tmp_path_factory: pytest.TempPathFactory, pipeline_run: PipelineRun):
    """A copy of the session's project (its git history and DVC cache too) with the run
    committed, for parameter changes and experiments that must not disturb the original."""
    return committed_copy(pipeline_run.root, tmp_path_factory.mktemp("experiments") / "project")


def test_params_change_shows_in_params_diff_and_reruns_only_downstream(changed_project) -> None:
    set_params(changed_project / "params.yaml", {"train_fusion.method": "stacking"})
    diff = run(["dvc", "params", "diff", "--json"], changed_project).stdout
    assert json.loads(diff)["params.yaml"]["train_fusion.method"]["new"] == "stacking"
    result = run(["dvc", "repro"], changed_project)
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout}
    assert ran == {"train_fusion", "predict"}
    fusion = json.loads((changed_project / "models/fusion/fusion.json").read_text())
    assert fusion["method"] in ("stacking", "text_only")
    run(["git", "checkout", "--", "params.yaml"], changed_project)
    run(["dvc", "checkout", "-q"], changed_project, check=False)


def test_experiment_with_the_keras_text_model(changed_project) -> None:
    # folds=0: the fusion then learns on validation alone instead of retraining the network
    # on each fold (seconds instead of minutes in a test).
    run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "train_text.model=cnn",
            "-S",
            "train_fusion.folds=0",
            "-n",
            "cnn-text",
        ],
        changed_project,
    )
    shown = json.loads(run(["dvc", "exp", "show", "--json"], changed_project).stdout)
    names = json.dumps(shown)
    assert "cnn-text" in names
    spec = json.loads((changed_project / "models/text/text_model.json").read_text())
    assert spec["kind"] == "cnn"


def test_editing_a_library_module_marks_every_stage_that_runs_it(changed_project) -> None:
    """dvc.yaml lists each stage's whole import closure (tests/test_architecture.py keeps it
    complete): an edit to calibration.py, used through text, image and fusion, shows."""
    module = changed_project / "src/rakuten_classifier/calibration.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        status = json.loads(run(["dvc", "status", "--json"], changed_project).stdout)
    finally:
        module.write_text(original)
    assert set(status) == set(STAGES) - {"import_raw", "make_dataset"}
    assert json.loads(run(["dvc", "status", "--json"], changed_project).stdout) == {}


def test_a_forced_rerun_writes_the_same_bytes(pipeline_run: PipelineRun, tmp_path) -> None:
    """Same code, params and data: every output dvc.lock records has the same hash, so
    `git status` stays clean and what one clone pushed, another pulls."""
    copy = committed_copy(pipeline_run.root, tmp_path / "project")
    before = (copy / "dvc.lock").read_text()
    run(["dvc", "repro", "--force"], copy)
    assert (copy / "dvc.lock").read_text() == before
    assert run(["git", "status", "--porcelain"], copy).stdout == ""
