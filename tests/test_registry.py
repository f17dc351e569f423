"""The model registry against a real MLflow server started by the tests: registration with
lineage, aliases, the pyfunc model, the promotion gate through the `rakuten-classifier`
commands as a user runs them, and the history of every alias move."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from api_support import variant_bundle
from conftest import BIN, PipelineRun, command_env

from rakuten_classifier import registry
from rakuten_classifier.bundle import load_bundle
from rakuten_classifier.data import image_paths, read_products

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uri(mlflow_server) -> str:
    return mlflow_server.uri


@pytest.fixture(scope="module")
def bundles(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Other versions of the pipeline's bundle (another photo weight each), with recorded
    held-out scores moved down or up: the promotion gate's mechanics."""
    root = tmp_path_factory.mktemp("versions")
    return {
        "worse": variant_bundle(bundle_dir, root / "worse", 0.35, metric_shift=-0.05),
        "better": variant_bundle(bundle_dir, root / "better", 0.4, metric_shift=0.1),
    }


def command(project: Path, uri: str, *args: str) -> subprocess.CompletedProcess:
    """`rakuten-classifier ...` in the project folder, as a user runs it."""
    return subprocess.run(
        [str(BIN / "rakuten-classifier"), *args],
        cwd=project,
        env={**command_env(), "MLFLOW_TRACKING_URI": uri, "RAKUTEN_REGISTRY_USER": "tester"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_bundle_is_registered_with_its_lineage(pipeline_run: PipelineRun, uri: str) -> None:
    root = pipeline_run.root
    result = command(root, uri, "register", "--alias", "champion")
    assert result.returncode == 0, result.stderr
    assert "version 1 (champion)" in result.stdout
    found = registry.resolve(uri, "rakuten", "champion")
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    bundle_md5 = next(
        out["md5"] for out in lock["stages"]["predict"]["outs"] if out["path"] == "models/bundle"
    )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    manifest = json.loads((root / "models/bundle/manifest.json").read_text())
    assert found.tags["git_commit"] == head
    assert found.tags["dvc_lock_md5"] == bundle_md5
    assert found.bundle_version == manifest["model_version"]
    run = registry.client(uri).get_run(
        registry.client(uri).get_model_version("rakuten", "1").run_id
    )
    assert run.data.metrics["fusion.f1_weighted"] == manifest["metrics"]["fusion"]["f1_weighted"]
    assert (
        json.loads(run.data.params["train_text.linear.C"])
        == manifest["params"]["train_text"]["linear"]["C"]
    )
    again = command(root, uri, "register")
    assert "version 1 (champion)" in again.stdout  # the same bundle: the same version


def test_the_champion_moves_only_through_the_gate(
    pipeline_run: PipelineRun, uri: str, bundles: dict[str, Path]
) -> None:
    refused = command(
        pipeline_run.root,
        uri,
        "register",
        "--bundle",
        str(bundles["worse"]),
        "--alias",
        "champion",
    )
    assert refused.returncode == 2
    assert "promote" in refused.stderr
    assert registry.resolve(uri, "rakuten", "champion").version == "1"


def test_the_pyfunc_model_predicts_like_the_bundle(
    uri: str, bundle_dir: Path, slice_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    registry.client(uri)
    model = mlflow.pyfunc.load_model("models:/rakuten@champion")
    products = read_products(slice_dir / "X_test_update.csv").head(6)
    paths = [str(p) for p in image_paths(products, slice_dir / "images/image_test")]
    frame = pd.DataFrame(
        {
            "designation": products["designation"],
            "description": products["description"],
            "image_path": paths,
        }
    )
    answers = model.predict(frame)
    bundle = load_bundle(bundle_dir)
    images = [Path(p).read_bytes() for p in paths]
    expected = bundle.predict_products(
        frame["designation"].tolist(), frame["description"].tolist(), images
    )
    assert answers["prdtypecode"].tolist() == expected.codes.tolist()
    assert answers["probability"].to_numpy() == pytest.approx(expected.confidence, abs=1e-6)


def test_a_worse_challenger_is_refused_with_its_reasons(
    pipeline_run: PipelineRun, uri: str, bundles: dict[str, Path]
) -> None:
    root = pipeline_run.root
    registered = command(
        root, uri, "register", "--bundle", str(bundles["worse"]), "--alias", "challenger"
    )
    assert "version 2 (challenger)" in registered.stdout, registered.stderr
    result = command(root, uri, "promote", "--timing-products", "10")
    assert result.returncode == 1
    assert "refused: fusion.f1_weighted: -0.0500 against a required +0.0050" in result.stderr
    assert "NO" in result.stdout and "ms per product" in result.stdout
    assert registry.resolve(uri, "rakuten", "champion").version == "1"


def test_forcing_needs_a_reason_which_is_recorded(pipeline_run: PipelineRun, uri: str) -> None:
    root = pipeline_run.root
    no_reason = command(root, uri, "promote", "--force")
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    forced = command(
        root, uri, "promote", "--force", "--reason", "rollback drill", "--timing-products", "10"
    )
    assert forced.returncode == 0, forced.stderr
    assert "forced past the gate" in forced.stdout
    assert registry.resolve(uri, "rakuten", "champion").version == "2"
    assert registry.resolve(uri, "rakuten", "challenger") is None  # it became the champion


def test_a_better_challenger_is_promoted(
    pipeline_run: PipelineRun, uri: str, bundles: dict[str, Path]
) -> None:
    root = pipeline_run.root
    command(root, uri, "register", "--bundle", str(bundles["better"]), "--alias", "challenger")
    result = command(root, uri, "promote", "--timing-products", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "version 3 is the champion (passed the gate)" in result.stdout
    assert registry.resolve(uri, "rakuten", "champion").version == "3"


def test_the_history_records_every_alias_move(pipeline_run: PipelineRun, uri: str) -> None:
    result = command(pipeline_run.root, uri, "registry", "history")
    assert result.returncode == 0, result.stderr
    history = registry.history(uri, "rakuten")
    moves = list(zip(history["alias"], history["from"], history["to"], strict=True))
    assert moves == [
        ("champion", "", "1"),
        ("challenger", "", "2"),
        ("champion", "1", "2"),
        ("challenger", "2", ""),
        ("challenger", "", "3"),
        ("champion", "2", "3"),
        ("challenger", "3", ""),
    ]
    forced = history[history["forced"] == "true"]
    assert forced["reason"].tolist() == ["rollback drill"]
    assert set(history["user"]) == {"tester"}
    assert "rollback drill" in result.stdout


def test_pull_fills_the_model_cache_the_api_reads(
    pipeline_run: PipelineRun, uri: str, tmp_path: Path
) -> None:
    """The Kubernetes init container's command: the champion's bundle lands where the API's
    registry source finds it without downloading again."""
    cache = tmp_path / "cache"
    result = command(pipeline_run.root, uri, "registry", "pull", "--cache", str(cache),
                     "--alias", "champion", "--alias", "challenger")  # fmt: skip
    assert result.returncode == 0, result.stderr
    champion = registry.resolve(uri, "rakuten", "champion")
    assert f"champion: version {champion.version} in {cache}" in result.stdout
    assert "challenger: none" in result.stderr
    pulled = registry.download_bundle(uri, champion, cache)  # a cache hit: the same folder
    assert load_bundle(pulled).version == champion.bundle_version
    missing = command(pipeline_run.root, uri, "registry", "pull", "--cache", str(cache),
                      "--model", "no-such-model")  # fmt: skip
    assert missing.returncode != 0 and "no champion" in missing.stderr
