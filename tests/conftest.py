"""Shared fixtures: real rows of the embedded sample, and one real pipeline run on a slice of
them (through `dvc repro` in a temporary git repository) whose model bundle many tests use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from demo_project import copy_unlabelled_and_tables, set_params

from rakuten_classifier.traffic import load_products

pytest_plugins = ["api_support", "services"]

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
BIN = Path(sys.executable).parent

# The shipped defaults (pretrained EfficientNet-Lite0 on cached features, out-of-fold fusion,
# word vectors) on a slice of the real sample: 7 product types, 14 products each (about half
# with their photo, one of them truncated).
FAST_PARAMS = {
    "data.sample_dir": "data/slice",
    "train_text.cnn.epochs": 2,
    "predict.timing_singles": 5,
    # e5 costs 0.2 s a text: the tests of mechanics run without the encoders
    # (tests/test_sentence_encoder.py covers them and their stage).
    "tokenize.sentence_encoder": None,
    # The experiments and CI tests switch the fusion to stacking, the default, from this.
    "train_fusion.method": "weighted",
}


def command_env() -> dict[str, str]:
    """The environment a user's shell would have: this virtualenv's commands first."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    # DVC's usage statistics would be sent over the network.
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a command as a user would; `env` adds variables (credentials, say) for this call."""
    result = subprocess.run(
        args,
        cwd=cwd,
        env={**command_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def make_slice(dest: Path, classes: int = 7, per_class: int = 14, test_rows: int = 12) -> Path:
    """Real products from the sample in the challenge layout: the first `classes` product
    types, `per_class` rows each (those with a photo first, the first photo truncated), and
    `test_rows` unlabelled rows."""
    x = pd.read_csv(SAMPLE / "X_train_update.csv", index_col=0)
    y = pd.read_csv(SAMPLE / "Y_train_CVw08PX.csv", index_col=0)
    photo = {
        index: SAMPLE / "images/image_train" / f"image_{row.imageid}_product_{row.productid}.jpg"
        for index, row in x.iterrows()
    }
    frame = x.join(y)
    frame["has_photo"] = [photo[index].exists() for index in frame.index]
    codes = sorted(frame["prdtypecode"].unique())[:classes]
    chosen = pd.concat(
        pd.concat(
            [group[group["has_photo"]].head(per_class // 2 + 1), group[~group["has_photo"]]]
        ).head(per_class)
        for _, group in frame[frame["prdtypecode"].isin(codes)].groupby("prdtypecode")
    ).sort_index()
    (dest / "images/image_train").mkdir(parents=True, exist_ok=True)
    (dest / "images/image_test").mkdir(parents=True, exist_ok=True)
    chosen[list(x.columns)].to_csv(dest / "X_train_update.csv")
    chosen[["prdtypecode"]].to_csv(dest / "Y_train_CVw08PX.csv")
    for index in chosen.index[chosen["has_photo"]]:
        shutil.copy2(photo[index], dest / "images/image_train")
    # One photo whose header is intact and whose body is cut: its product must be classified
    # from its text (make_dataset decodes every photo to find it).
    first = photo[chosen.index[chosen["has_photo"]][0]]
    truncated = dest / "images/image_train" / first.name
    truncated.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    copy_unlabelled_and_tables(dest, test_rows)
    return dest


def make_project(root: Path, overrides: dict[str, object] | None = None) -> Path:
    """A copy of this project (code, pipeline, params) as its own git repository, with a
    slice of the sample as its data, ready for `dvc repro`."""
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, root / name)
    for folder in ("stages", "src", "data/feedback"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    make_slice(root / "data" / "slice")
    set_params(root / "params.yaml", {**FAST_PARAMS, **(overrides or {})})
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "tests@example.com"], root)
    run(["git", "config", "user.name", "tests"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "project under test"], root)
    return root


def committed_copy(project: Path, dest: Path, message: str = "baseline run") -> Path:
    """A copy of a project (git history and DVC cache too) with its current state committed:
    a run the tests can change, or compare with, without disturbing the original."""
    shutil.copytree(project, dest, symlinks=True)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", message], dest)
    return dest


def execute_notebook(path: Path, env: dict[str, str] | None = None) -> Any:
    """Run a notebook headless from its own folder, as Jupyter would, in the user's
    environment (`command_env()`, plus `env`); returns it with its outputs (a failing cell
    raises)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=600,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute(env={**command_env(), **(env or {})})
    return notebook


@dataclass
class PipelineRun:
    root: Path
    output: str

    @property
    def bundle(self) -> Path:
        return self.root / "models" / "bundle"


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The whole pipeline, run once for the session with `dvc repro` on a slice of the sample."""
    root = make_project(tmp_path_factory.mktemp("project"))
    result = run(["dvc", "repro"], root)
    return PipelineRun(root, result.stdout + result.stderr)


@pytest.fixture(scope="session")
def bundle_dir(pipeline_run: PipelineRun) -> Path:
    return pipeline_run.bundle


@pytest.fixture(scope="session")
def slice_dir(pipeline_run: PipelineRun) -> Path:
    return pipeline_run.root / "data" / "slice"


@pytest.fixture(scope="session")
def fresh_products(slice_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Real products of the slice's product types that its models never saw (the sample's
    others), with their true types; their mix is uneven (4 to 24 per type), the slice's is
    even."""
    x = pd.read_csv(SAMPLE / "X_train_update.csv", index_col=0)
    y = pd.read_csv(SAMPLE / "Y_train_CVw08PX.csv", index_col=0)
    trained = pd.read_csv(slice_dir / "Y_train_CVw08PX.csv", index_col=0)
    keep = y["prdtypecode"].isin(trained["prdtypecode"]) & ~y.index.isin(trained.index)
    folder = tmp_path_factory.mktemp("fresh")
    x[keep].to_csv(folder / "X.csv")
    y[keep].to_csv(folder / "Y.csv")
    products = load_products(folder / "X.csv", SAMPLE / "images/image_train",
                                     folder / "Y.csv")  # fmt: skip
    # In a random order: the sample's photos are not spread evenly over its rows, and the
    # exporter checks windows of the traffic while it arrives.
    return products.sample(frac=1.0, random_state=0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted weights and other caches go to a temporary folder, never the user's home; so
    does the prediction store of the in-process APIs (real servers get their own)."""
    os.environ["RAKUTEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    store = tmp_path_factory.mktemp("store")
    os.environ["RAKUTEN_API_DATABASE_URL"] = f"sqlite:///{store / 'predictions.db'}"
    os.environ["RAKUTEN_API_STORE_SPOOL_DIR"] = str(store / "spool")


# Fixtures that run the pipeline or start a server: a test that uses any of them is slow.
SLOW_FIXTURES = frozenset({"pipeline_run", "bundle_dir", "slice_dir", "server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark slow every test that needs the pipeline run or a real server, so that
    `make test-fast` (pytest -m "not slow") runs the rest in about a minute."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
