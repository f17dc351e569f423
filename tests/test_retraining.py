"""Retraining from feedback: the store's feedback exported as a DVC-tracked batch that
make_dataset adds to the training split, and the retraining DAG run end to end by
`airflow dags test` (Airflow from .venv-airflow, built by `make airflow-env`) on a copy of the
pipeline run, with a real API's store, the MLflow registry and an S3 DVC remote (moto), all on
127.0.0.1."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import demo_loop  # orchestration/: on pytest's pythonpath
import pandas as pd
import pytest
from api_support import PASSWORD, running_server
from conftest import REPO, PipelineRun, command_env, committed_copy, run, set_params
from services import KEY_ID, SECRET, point_remote_at, wait_until

from rakuten_classifier import traffic
from rakuten_classifier.data import DataError
from rakuten_classifier.dataset import make_dataset
from rakuten_classifier.feedback_data import batches, last_exported
from rakuten_classifier.feedback_export import export_feedback
from rakuten_classifier.store.database import connect
from rakuten_classifier.store.queries import read_feedback

AIRFLOW_BIN = REPO / ".venv-airflow" / "bin" / "airflow"
MODEL = "rakuten-retraining"  # not the registry tests' model: they share the server
DAG = "rakuten_retraining"


def airflow(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    if not AIRFLOW_BIN.exists():
        pytest.fail("no .venv-airflow: run `make airflow-env` (make test does)")
    variables = {
        **command_env(),
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "orchestration" / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    return subprocess.run([str(AIRFLOW_BIN), *args], env=variables, capture_output=True,
                          text=True, timeout=1200)  # fmt: skip


DAGBAG = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="orchestration/dags")
errors = {path: str(error) for path, error in bag.import_errors.items()}
tasks = {dag: sorted(task.task_id for task in bag.dags[dag].tasks) for dag in bag.dag_ids}
print(json.dumps({"errors": errors, "tasks": tasks}))
"""


@pytest.mark.slow  # needs .venv-airflow, which `make test` builds and `make test-fast` does not
def test_the_dagbag_imports_the_dag_without_errors(tmp_path: Path) -> None:
    airflow(tmp_path, {}, "version")  # fails the test when .venv-airflow is missing
    result = subprocess.run(
        [str(AIRFLOW_BIN.parent / "python"), "-c", DAGBAG], cwd=REPO, capture_output=True,
        text=True, timeout=300,
        env={**command_env(), "AIRFLOW_HOME": str(tmp_path),
             "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    bag = json.loads(result.stdout.splitlines()[-1])
    assert bag["errors"] == {}
    assert bag["tasks"] == {
        DAG: ["check", "export", "promote", "publish", "register", "report", "reproduce"],
        "rakuten_promotion": ["promote_on_online_evidence"],
    }


@pytest.fixture(scope="module")
def project(pipeline_run: PipelineRun, s3_endpoint: str, tmp_path_factory) -> Path:
    """The session's pipeline run as a project with the committed S3 remote (moto) and a low
    feedback threshold; its data and models pushed."""
    root = committed_copy(pipeline_run.root, tmp_path_factory.mktemp("retrain") / "project")
    (root / ".dvc" / "config").write_text((REPO / ".dvc" / "config").read_text())
    point_remote_at(root, s3_endpoint)
    for key, value in (("access_key_id", KEY_ID), ("secret_access_key", SECRET)):
        run(["dvc", "remote", "modify", "--local", "storage", key, value], root)
    photos = str(REPO / "data" / "sample" / "images" / "image_train")
    set_params(root / "params.yaml", {"retrain.min_new_feedback": 20, "retrain.image_dir": photos})
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "remote and retraining settings"], root)
    run(["dvc", "push", "-q"], root)
    return root


@pytest.fixture(scope="module")
def served(project: Path, fresh_products: pd.DataFrame, tmp_path_factory) -> str:
    """A real API on the project's bundle, keeping texts, got the fresh products and the true
    type of each; yields its store's URL."""
    store = tmp_path_factory.mktemp("store")
    url = f"sqlite:///{store / 'store.db'}"
    settings = {"database_url": url, "store_texts": "true", "store_spool_dir": store / "spool"}
    with running_server(store / "api", project / "models/bundle", "predict+reviewer",
                        **settings) as api:  # fmt: skip
        headers = traffic.login(api.url, "alice", PASSWORD)
        summary = traffic.replay(api.url, headers, fresh_products, 1.0, clients=2)
        assert not summary.errors and summary.feedback == len(fresh_products), summary.lines()
        # Feedback is acknowledged once spooled to disk; the writer puts it in the database.
        wait_until(lambda: len(read_feedback_rows(url)) == len(fresh_products), 60,
                   "the store's feedback")  # fmt: skip
    return url


def read_feedback_rows(url: str) -> pd.DataFrame:
    engine = connect(url)
    try:
        return read_feedback(engine)
    finally:
        engine.dispose()


def test_feedback_export_writes_a_batch_make_dataset_adds_to_training(
    served: str, fresh_products: pd.DataFrame, project: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "feedback"
    photos = REPO / "data" / "sample" / "images" / "image_train"
    first = export_feedback(served, folder, photos)
    assert first.products == len(fresh_products) and first.without_text == 0, first.lines()
    assert first.photos == sum(Path(p).is_file() for p in fresh_products["image_path"])
    assert export_feedback(served, folder, photos).batch is None  # nothing new since
    assert last_exported(folder) == first.feedback and len(batches(folder)) == 1
    exported = pd.read_csv(first.batch / "Y.csv", index_col=0)
    truth = fresh_products.set_index("productid")["prdtypecode"]
    x = pd.read_csv(first.batch / "X.csv", index_col=0)
    assert (exported["prdtypecode"].to_numpy() == truth.loc[x["productid"]].to_numpy()).all()

    params = {"val_size": 0.15, "test_size": 0.15, "max_rows": None}
    base = make_dataset(project / "data/raw", tmp_path / "base", params, 0)
    added = make_dataset(project / "data/raw", tmp_path / "added", params, 0, folder)
    assert added["feedback"] == {"rows": len(fresh_products), "already_in_data": 0,
                                 "unknown_type": 0}  # fmt: skip
    for split in ("val", "test"):  # the base split does not move
        before = pd.read_parquet(tmp_path / "base" / f"{split}.parquet")
        after = pd.read_parquet(tmp_path / "added" / f"{split}.parquet")
        pd.testing.assert_frame_equal(before, after)
    train = pd.read_parquet(tmp_path / "added" / "train.parquet")
    assert added["train"]["rows"] == base["train"]["rows"] + len(fresh_products)
    assert train.index.is_unique and set(x["productid"]) <= set(train["productid"])

    # A product already in the data is left out; a broken batch names its file and row.
    again = folder / "feedback-9999999999"
    again.mkdir()
    known = pd.read_parquet(tmp_path / "base" / "test.parquet").iloc[:1]
    known[["designation", "description", "productid", "imageid"]].to_csv(again / "X.csv")
    known[["prdtypecode"]].to_csv(again / "Y.csv")
    with_known = make_dataset(project / "data/raw", tmp_path / "known", params, 0, folder)
    assert with_known["feedback"]["already_in_data"] == 1
    (again / "Y.csv").write_text(",prdtypecode\n0,not-a-code\n")
    with pytest.raises(DataError, match=r"feedback-9999999999/Y.csv.*prdtypecode"):
        make_dataset(project / "data/raw", tmp_path / "broken", params, 0, folder)


def test_the_whole_loop_retrains_from_feedback_and_serves_the_result(
    project: Path, fresh_products: pd.DataFrame, tmp_path: Path
) -> None:
    """orchestration/demo_loop.py on the pipeline run (`make demo-loop` on a fresh slice):
    traffic and feedback, drift and its alert, the retraining DAG, the challenger in shadow,
    the promotion DAG, the API serving the result without a restart."""
    summary = demo_loop.loop(project, tmp_path, fresh_products)
    assert "photo_share" in summary["drift"]
    assert "RakutenDriftDetected" in summary["alerts"]
    table = summary["retraining"]
    for task in ("check", "export", "reproduce", "register", "publish"):
        assert f"| {task} | success |" in table, table
    assert "| promote | skipped |" in table  # online evidence: left to rakuten_promotion
    assert summary["served_in_shadow"] == {"champion": "1", "challenger": "2"}
    assert "challenger" in summary["online"]
    aliases = {line.split()[0]: line.split()[1] for line in summary["registry"].splitlines()
               if line.strip()}  # fmt: skip
    assert aliases in ({"1": "champion", "2": "challenger"}, {"1": "-", "2": "champion"})
    champion = next(version for version, alias in aliases.items() if alias == "champion")
    assert summary["served_after"]["champion"] == champion
    # The feedback batch is tracked by DVC, committed with the new dvc.lock, and pushed.
    batch = batches(project / "data" / "feedback")
    assert len(batch) == 1 and (batch[0].parent / f"{batch[0].name}.dvc").exists()
    log = run(["git", "log", "-1", "--name-only", "--format=%s"], project).stdout
    assert log.startswith("Retraining ") and "dvc.lock" in log and f"{batch[0].name}.dvc" in log
    assert json.loads((project / "metrics" / "data.json").read_text())["feedback"]["rows"] > 0
    cloud = run(["dvc", "status", "--cloud"], project).stdout
    assert "up to date" in cloud or "in sync" in cloud, cloud
