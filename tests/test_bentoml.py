"""The BentoML service (deploy/bentoml) run for real: `bentoml serve` on 127.0.0.1 with the
session's bundle, the slice's test products (photos included) sent at once by concurrent
clients. Its answers are the batch command's, and concurrent requests share model calls."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests
from conftest import BIN, REPO, command_env, run
from local_stack import free_port, process
from prometheus_client.parser import text_string_to_metric_families

from rakuten_classifier.data import image_paths, read_products
from rakuten_classifier.preprocess import read_photo


@pytest.fixture(scope="module")
def bento(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    env = {**command_env(), "BENTOML_DO_NOT_TRACK": "True", "RAKUTEN_BENTO_BUNDLE": str(bundle_dir)}
    env["BENTOML_HOME"] = str(tmp_path_factory.mktemp("bentoml-home"))
    command = [str(BIN / "bentoml"), "serve", "deploy/bentoml/service.py:RakutenClassifier",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path_factory.mktemp("bento") / "serve.log"
    with process(command, log, f"http://127.0.0.1:{port}/readyz", env=env, cwd=REPO):
        yield f"http://127.0.0.1:{port}"


def batch_sizes(url: str) -> tuple[float, float]:
    """How many batches the service ran, and how many products they held."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    found = {"_count": 0.0, "_sum": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for suffix in found:
                if sample.name == f"bentoml_service_adaptive_batch_size{suffix}":
                    found[suffix] += sample.value
    return found["_count"], found["_sum"]


def test_answers_are_the_batch_commands_and_requests_share_model_calls(
    bento: str, bundle_dir: Path, slice_dir: Path, tmp_path: Path
) -> None:
    x_csv, photos = slice_dir / "X_test_update.csv", slice_dir / "images" / "image_test"
    out = tmp_path / "preds.csv"
    run(["rakuten-classifier", "predict", "--x-csv", str(x_csv), "--image-dir", str(photos),
         "--bundle", str(bundle_dir), "--out", str(out)], tmp_path)  # fmt: skip
    expected = pd.read_csv(out, index_col=0)
    products = read_products(x_csv)
    bodies = []
    for (_, row), path in zip(products.iterrows(), image_paths(products, photos), strict=True):
        data = read_photo(path, missing_ok=True)
        photo = base64.b64encode(data).decode() if data else None
        description = None if pd.isna(row["description"]) else row["description"]
        product = {"designation": row["designation"], "description": description}
        bodies.append({"products": [{**product, "image_base64": photo}]})
    assert any(body["products"][0]["image_base64"] for body in bodies)
    batches_before, _ = batch_sizes(bento)
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(
            pool.map(
                lambda body: requests.post(f"{bento}/classify", json=body, timeout=120), bodies
            )
        )
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    got = [answer.json()[0] for answer in answers]
    assert [a["prdtypecode"] for a in got] == expected["prdtypecode"].tolist()
    # The serving paths are not pinned like the pipeline: agreement to ~1e-6, not bit for bit.
    assert [a["probability"] for a in got] == pytest.approx(
        expected["probability"].tolist(), abs=1e-5
    )
    sent = [body["products"][0]["image_base64"] is not None for body in bodies]
    assert any(a["used_photo"] for a in got)
    assert all(sent_photo or not a["used_photo"] for a, sent_photo in zip(got, sent, strict=True))
    batches, _ = batch_sizes(bento)
    assert batches - batches_before < len(bodies)  # adaptive batching grouped requests


def test_bad_input_is_refused_with_the_field_named(bento: str) -> None:
    answer = requests.post(
        f"{bento}/classify", json={"products": [{"designation": ""}]}, timeout=30
    )
    assert answer.status_code in (400, 422)
    assert "designation" in answer.text
    broken_photo = {"products": [{"designation": "Chaise", "image_base64": "@@not base64@@"}]}
    answer = requests.post(f"{bento}/classify", json=broken_photo, timeout=30)
    assert answer.status_code == 200
    assert answer.json()[0]["used_photo"] is False and answer.json()[0]["photo_problem"]
