"""The demonstration loop's project (`make demo-loop`): a clone of this repository's HEAD whose
data is a slice of the embedded sample (the first product types, some of their products), with
the other products of those types held back as the traffic the champion has never seen, and a
local folder as its DVC remote (the committed one is a team's, never touched by a demo)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
VENV_BIN = REPO / ".venv" / "bin"
IMAGES = SAMPLE / "images" / "image_train"


def project_env(**extra: str) -> dict[str, str]:
    """The environment the project's commands run in: its .venv first on PATH (DVC runs each
    stage's `python` from it), no usage statistics sent anywhere."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update({"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"})  # fmt: skip
    return {**env, **extra}


def sh(args: list[str], cwd: Path, env: dict[str, str] | None = None, quiet: bool = True
       ) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a command; its output is shown unless `quiet`, and a failure raises with it."""
    result = subprocess.run(args, cwd=cwd, env=env or project_env(), text=True,
                            capture_output=quiet, timeout=3600)  # fmt: skip
    if result.returncode:
        output = (result.stdout or "") + (result.stderr or "")
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{output}")
    return result


def copy_unlabelled_and_tables(dest: Path, test_rows: int = 12) -> None:
    """The first `test_rows` unlabelled products with their photos, and the category tables,
    from the sample into a slice at `dest`."""
    test = pd.read_csv(SAMPLE / "X_test_update.csv", index_col=0).head(test_rows)
    test.to_csv(dest / "X_test_update.csv")
    for row in test.itertuples():
        name = f"image_{row.imageid}_product_{row.productid}.jpg"
        shutil.copy2(SAMPLE / "images/image_test" / name, dest / "images/image_test")
    for name in ("categories.csv", "class_counts_full_train.csv"):
        shutil.copy2(SAMPLE / name, dest / name)


def write_slice(dest: Path, held_back: Path, classes: int, per_class: int) -> pd.DataFrame:
    """The slice in the challenge's layout under `dest`; the held-back products of its types
    as X.csv and Y.csv under `held_back`, returned."""
    x = pd.read_csv(SAMPLE / "X_train_update.csv", index_col=0)
    y = pd.read_csv(SAMPLE / "Y_train_CVw08PX.csv", index_col=0)
    codes = sorted(y["prdtypecode"].unique())[:classes]
    chosen = y[y["prdtypecode"].isin(codes)].groupby("prdtypecode").head(per_class).index
    rest = y.index[y["prdtypecode"].isin(codes) & ~y.index.isin(chosen)]
    (dest / "images/image_train").mkdir(parents=True, exist_ok=True)
    (dest / "images/image_test").mkdir(parents=True, exist_ok=True)
    x.loc[chosen].to_csv(dest / "X_train_update.csv")
    y.loc[chosen].to_csv(dest / "Y_train_CVw08PX.csv")
    for row in x.loc[chosen].itertuples():
        photo = IMAGES / f"image_{row.imageid}_product_{row.productid}.jpg"
        if photo.exists():
            shutil.copy2(photo, dest / "images/image_train")
    copy_unlabelled_and_tables(dest)
    held_back.mkdir(parents=True, exist_ok=True)
    x.loc[rest].to_csv(held_back / "X.csv")
    y.loc[rest].to_csv(held_back / "Y.csv")
    return y.loc[rest]


def set_params(params_file: Path, values: dict[str, object]) -> None:
    params = yaml.safe_load(params_file.read_text())
    for dotted, value in values.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def prepare(work: Path, classes: int, per_class: int) -> Path:
    """Clone, slice, configure and reproduce the project under `work`; returns it."""
    project = work / "project"
    sh(["git", "clone", "--quiet", str(REPO), str(project)], work)
    write_slice(project / "data" / "slice", work / "traffic", classes, per_class)
    # Without the sentence encoders: the loop's API answers its traffic in milliseconds.
    set_params(project / "params.yaml", {"data.sample_dir": "data/slice",
                                         "retrain.min_new_feedback": 20,
                                         "retrain.image_dir": str(IMAGES),
                                         "tokenize.sentence_encoder": None})  # fmt: skip
    (work / "remote").mkdir()
    sh(["dvc", "remote", "add", "--local", "-d", "demo", str(work / "remote")], project)
    sh(["git", "add", "-A"], project)
    sh(["git", "-c", "user.name=demo", "-c", "user.email=demo@localhost", "commit", "-q", "-m",
        "demo: a slice of the sample"], project)  # fmt: skip
    sh(["dvc", "repro"], project, quiet=False)
    sh(["dvc", "push", "-q"], project)
    return project
