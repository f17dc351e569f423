"""`rakuten-classifier report`: the workspace against a committed run of the real pipeline.

The workspace's metrics are edited by hand here (a mechanics test: known changes in, the
report must show exactly them, with the right signs, order and files)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import PipelineRun, committed_copy, run, set_params
from PIL import Image

from rakuten_classifier.report import _metrics_rows

FUSION_F1_GAIN = 0.05
TEXT_ACCURACY_LOSS = 0.1


@dataclass
class EditedProject:
    root: Path
    worse: int  # product type code whose fusion F1 went down
    better: int  # and up


@pytest.fixture(scope="module")
def edited_project(
    tmp_path_factory: pytest.TempPathFactory, pipeline_run: PipelineRun
) -> EditedProject:
    """The session's run committed, then in the workspace: one param changed, the fusion's
    weighted F1 up, the text model's accuracy down, and the F1 of two product types moved in
    opposite directions."""
    root = committed_copy(pipeline_run.root, tmp_path_factory.mktemp("report") / "project")
    set_params(root / "params.yaml", {"train_text.linear.C": 0.05})
    metrics = json.loads((root / "metrics/test.json").read_text())
    metrics["fusion"]["f1_weighted"] += FUSION_F1_GAIN
    metrics["text"]["accuracy"] -= TEXT_ACCURACY_LOSS
    (root / "metrics/test.json").write_text(json.dumps(metrics))
    per_class = pd.read_csv(root / "metrics/per_class.csv")
    fusion = per_class[per_class["model"] == "fusion"]
    worse = fusion.index[fusion["f1"] >= 0.2][0]
    better = fusion.index[(fusion["f1"] <= 0.9) & (fusion.index != worse)][0]
    per_class.loc[worse, "f1"] -= 0.2
    per_class.loc[better, "f1"] += 0.1
    per_class.to_csv(root / "metrics/per_class.csv", index=False)
    return EditedProject(
        root, per_class.at[worse, "prdtypecode"], per_class.at[better, "prdtypecode"]
    )


@pytest.fixture(scope="module")
def report_dir(edited_project: EditedProject) -> Path:
    result = run(["rakuten-classifier", "report", "--baseline", "HEAD"], edited_project.root)
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == edited_project.root / "reports/workspace-vs-HEAD/report.md"
    return path.parent


def _row(markdown: str, *first_cells: str) -> str:
    prefix = "| " + " | ".join(first_cells) + " |"
    rows = [line for line in markdown.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, f"{prefix}: {rows}"
    return rows[0]


def test_metrics_table_shows_each_change_with_its_direction(
    report_dir: Path, pipeline_run: PipelineRun
) -> None:
    markdown = (report_dir / "report.md").read_text()
    old = json.loads((pipeline_run.root / "metrics/test.json").read_text())
    before, after = old["fusion"]["f1_weighted"], old["fusion"]["f1_weighted"] + FUSION_F1_GAIN
    assert f"{before:.4f} → {after:.4f}, +0.0500 ✅ better" in markdown
    assert _row(markdown, "fusion", "weighted F1").endswith(
        f"| {before:.4f} | {after:.4f} | +0.0500 ✅ better |"
    )
    assert _row(markdown, "text", "accuracy").endswith("| -0.1000 ❌ worse |")
    assert _row(markdown, "image", "accuracy").endswith("| = same |")
    # Times are the machine's, not the run's: not in the committed files, so not compared.
    assert "ms per product" not in markdown and "`make bench`" in markdown
    assert "| model | metric | HEAD (baseline) | workspace | change |" in markdown


def test_params_diff_lists_only_the_changed_param(report_dir: Path) -> None:
    markdown = (report_dir / "report.md").read_text()
    section = markdown.split("## Parameters that differ")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == ["| `train_text.linear.C` | `0.5` | `0.05` |"]


def test_per_class_table_lists_the_moved_classes_worst_first(
    report_dir: Path, edited_project: EditedProject
) -> None:
    markdown = (report_dir / "report.md").read_text()
    fusion = markdown.split("### fusion")[1].split("<details>")[0]
    rows = [line for line in fusion.splitlines() if re.match(r"\| \d+ ", line)]
    assert [int(row.split()[1]) for row in rows] == [edited_project.worse, edited_project.better]
    assert rows[0].endswith("| -0.2000 ❌ worse |") and rows[1].endswith("| +0.1000 ✅ better |")
    classes = pd.read_csv(edited_project.root / "metrics/per_class.csv")["prdtypecode"].nunique()
    assert f"2 product types changed (worst first), {classes - 2} unchanged." in fusion
    # The other models did not move: folded sections that say so.
    assert "<details><summary>text</summary>" in markdown
    assert "text: the F1 of every product type is the same in both runs." in markdown


def test_plots_are_local_pngs_next_to_the_report(report_dir: Path) -> None:
    markdown = (report_dir / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert {"f1_change.png", "confusion_fusion_baseline.png", "confusion_fusion_target.png"} <= set(
        linked
    )
    for name in linked:
        with Image.open(report_dir / name) as image:
            assert image.format == "PNG" and min(image.size) > 100, name
    assert not any(name.startswith(("http:", "https:", "/")) for name in linked)


def test_html_view_is_one_self_contained_file(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    markdown = (report_dir / "report.md").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == markdown.count("![")
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert "<script" not in html and not re.search(r'(src|href)="https?:', html)
    assert "<table>" in html and "train_text.linear.C" in html


def test_unknown_baseline_is_a_clear_error(edited_project: EditedProject) -> None:
    result = run(
        ["rakuten-classifier", "report", "--baseline", "no-such-run"],
        edited_project.root,
        check=False,
    )
    assert result.returncode == 2
    assert "'no-such-run' is neither a git revision nor a DVC experiment" in result.stderr


def test_baseline_without_a_run_names_the_missing_file(edited_project: EditedProject) -> None:
    # HEAD~1 is the project before its first `dvc repro`: no metrics committed.
    result = run(
        ["rakuten-classifier", "report", "--baseline", "HEAD~1", "--no-html"],
        edited_project.root,
        check=False,
    )
    assert result.returncode == 2
    assert "no metrics/test.json" in result.stderr and "dvc repro" in result.stderr
    assert not (edited_project.root / "reports/workspace-vs-HEAD-1").exists()


def test_timings_of_older_runs_are_still_compared() -> None:
    """Runs of earlier versions kept their prediction times in metrics/test.json."""
    old = {"fusion": {"f1_weighted": 0.5, "ms_per_product_batch": 20.0}}
    new = {"fusion": {"f1_weighted": 0.5, "ms_per_product_batch": 10.0}}
    _, timings = _metrics_rows(old, new)
    assert timings == [["fusion", "ms per product (batch)", "20.00", "10.00", "-50% ✅ faster"]]
