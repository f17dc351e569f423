"""The paired statistics of bench/cross_validation.py (bench/paired_scores.py), on answers whose
truth is known: a model identical to the reference differs by nothing, a better one by a
positive interval, the fusion is compared with the text model on the products with a photo
only; and its --set variants."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import typer
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from cross_validation import with_changes
from paired_scores import REFERENCE, render, summarise


def answers_of(y: np.ndarray, wrong_share: float, seed: int, repeats: int = 3) -> np.ndarray:
    """`repeats` columns of answers, each wrong on about `wrong_share` of the products."""
    rng = np.random.default_rng(seed)
    columns = []
    for _ in range(repeats):
        answer = y.copy()
        wrong = rng.random(len(y)) < wrong_share
        answer[wrong] = (y[wrong] + 1) % 5
        columns.append(answer)
    return np.stack(columns, axis=1)


def test_paired_differences_and_their_intervals() -> None:
    y = np.arange(600) % 5
    has_photo = np.arange(600) % 2 == 0
    reference = answers_of(y, 0.4, seed=1)
    text = answers_of(y, 0.2, seed=2)
    fusion = text.copy()
    fusion[has_photo] = y[has_photo, None]  # right on every product with a photo
    image = np.where(has_photo[:, None], answers_of(y, 0.5, seed=3), -1)
    answers = {REFERENCE: reference, "text": text, "image": image, "fusion": fusion}
    rows = {
        (r["model"], r["products"], r.get("against")): r for r in summarise(y, answers, has_photo)
    }

    same = summarise(y, {**answers, "text": reference}, has_photo)
    text_vs_reference = next(r for r in same if r["model"] == "text" and r["products"] == "all")
    assert text_vs_reference["difference"] == 0 and text_vs_reference["difference_interval"] == [
        0,
        0,
    ]

    better = rows[("text", "all", REFERENCE)]
    assert better["difference"] > 0.15 and better["difference_interval"][0] > 0.1
    low, high = better["f1_interval"]
    assert low < better["weighted_f1"] < high
    assert rows[("fusion", "with photo", "text")]["n"] == 300
    assert rows[("fusion", "with photo", "text")]["weighted_f1"] == 1.0
    assert rows[("image", "with photo", REFERENCE)]["difference"] < 0
    assert ("image", "all", REFERENCE) not in rows  # no photo, no image answer

    table = render(list(rows.values()), 3, 5, {"text": 1.0})
    assert table.count("\n") == len(rows) + 1 and "vs text" in table


def test_a_variant_changes_one_setting_and_names_a_wrong_one() -> None:
    params = {"tokenize": {"min_df": 1, "stop_words": ["french"]}, "seed": 0}
    changed = with_changes(params, ["tokenize.min_df=2", "tokenize.stop_words=[]"])
    assert changed["tokenize"] == {"min_df": 2, "stop_words": []}
    assert params["tokenize"]["min_df"] == 1  # the defaults are left as they are
    for wrong in ("tokenize.min_dfs=2", "seed=1", "tokenize.min_df", "train_image.size=1"):
        with pytest.raises(typer.BadParameter, match="--set"):
            with_changes(params, [wrong])
