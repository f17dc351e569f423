"""Comparing runs of the pipeline: a Markdown report of one run against a baseline, and the
experiments of a project as a table.

A run is the workspace, a git revision or a DVC experiment. All the report reads is what a run
commits to git (params.yaml and the `cache: false` metrics, plots and DVCLive files), so the
baseline comes straight from git: no DVC cache, remote or network is needed. The plots are
PNGs rendered here (`dvc plots show` loads its JavaScript from a CDN); the optional HTML view
embeds them as data URIs, so it opens offline as a single file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rakuten_classifier import config
from rakuten_classifier.config import logger
from rakuten_classifier.files import atomic_dir, read_json
from rakuten_classifier.metrics import plot_f1_change, plot_training_curves, read_dvclive_history

WORKSPACE = "workspace"
# What a run leaves in git, relative to the project root: everything the report reads.
RUN_FILES = (config.PARAMS_FILE, config.METRICS_DIR, config.PLOTS_DIR, config.DVCLIVE_DIR)
TEST_METRICS = config.METRICS_DIR / "test.json"
PER_CLASS_CSV = config.METRICS_DIR / "per_class.csv"
MODELS = ("fusion", "text", "image", "fusion_with_photo")
PER_CLASS_MODELS = ("fusion", "text", "image")
KERAS_STAGES = ("train_text", "train_image")
SCORES = {"f1_weighted": "weighted F1", "f1_macro": "macro F1", "accuracy": "accuracy"}
TIMINGS = {
    "ms_per_product_batch": "ms per product (batch)",
    "ms_per_product_single": "ms per product (one at a time)",
}
# Timings move by several percent between two runs of the same code on the same machine.
TIMING_NOISE = 0.10
# DVC keeps each experiment as the git ref refs/exps/<baseline sha[:2]>/<sha[2:]>/<name>.
EXPERIMENT_REF = re.compile(r"^refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/(?P<name>[^/]+)$")
# Below this many test products, a report warns that per-class F1 changes are noisy.
SMALL_TEST_SPLIT = 1000
PLOTS_HEADING = "## Plots"
MISSING = "n/a"


class ReportError(RuntimeError):
    """A run that cannot be found or read: names the revision or experiment and the file."""


@dataclass(frozen=True)
class Run:
    """One side of a comparison, with its files (params.yaml, metrics/...) under `root`."""

    spec: str
    rev: str | None  # None for the workspace
    kind: str  # workspace | revision | experiment
    root: Path

    @property
    def title(self) -> str:
        return self.spec if self.rev is None else f"{self.spec} ({self.kind} {self.rev[:7]})"


def _dvc() -> str:
    """The `dvc` of this Python environment (a notebook or script may run without the
    virtualenv's bin folder on PATH), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else (shutil.which("dvc") or "dvc")


def _git(project: Path, *args: str) -> bytes:
    result = subprocess.run(["git", *args], cwd=project, capture_output=True, check=False)
    if result.returncode:
        problem = result.stderr.decode(errors="replace").strip()
        raise ReportError(f"git {' '.join(args)} failed in {project}: {problem}")
    return result.stdout


def resolve_revision(project: Path, spec: str) -> tuple[str, str]:
    """The commit of a git revision (branch, tag, sha, HEAD~1...) or of a DVC experiment name,
    and which of the two it is."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode == 0:
        return found.stdout.strip(), "revision"
    refs = _git(project, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps")
    matches = sorted(
        {
            sha
            for sha, ref in (line.split(" ", 1) for line in refs.decode().splitlines())
            if (match := EXPERIMENT_REF.match(ref)) and match["name"] == spec
        }
    )
    if len(matches) == 1:
        return matches[0], "experiment"
    if matches:
        shas = ", ".join(sha[:7] for sha in matches)
        raise ReportError(f"'{spec}' names {len(matches)} experiments ({shas}): give one's sha")
    raise ReportError(
        f"'{spec}' is neither a git revision nor a DVC experiment of {project} "
        "(`git log --oneline` and `dvc exp list --all-commits` list them)"
    )


def load_run(project: Path, spec: str, scratch: Path) -> Run:
    """The workspace as it is, or a revision's or experiment's run files extracted from git
    into `scratch`."""
    if spec == WORKSPACE:
        return Run(spec, None, WORKSPACE, Path(project))
    sha, kind = resolve_revision(project, spec)
    # The project may sit in a sub-folder of its git repository.
    tree = f"{sha}:{_git(project, 'rev-parse', '--show-prefix').decode().strip()}"
    committed = set(_git(project, "ls-tree", "--name-only", tree).decode().splitlines())
    paths = [str(path) for path in RUN_FILES if str(path) in committed]
    root = Path(scratch) / sha
    root.mkdir(parents=True, exist_ok=True)
    if paths:
        archive = _git(project, "archive", "--format=tar", tree, "--", *paths)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
    return Run(spec, sha, kind, root)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, the way `dvc params diff` and `dvc exp show` name them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_test_metrics(run: Run) -> dict[str, Any]:
    path = run.root / TEST_METRICS
    if not path.exists():
        raise ReportError(
            f"{run.title}: no {TEST_METRICS}; the predict stage writes it: run `dvc repro` "
            "(and for a revision, commit dvc.lock and metrics/ with it)"
        )
    return read_json(path)


def read_params(run: Run) -> dict[str, Any]:
    path = run.root / config.PARAMS_FILE
    return _flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}


def read_per_class(run: Run) -> pd.DataFrame | None:
    path = run.root / PER_CLASS_CSV
    return pd.read_csv(path) if path.exists() else None


# --- Markdown ---------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows), ""]


def _number(value: Any, digits: int) -> str:
    return MISSING if value is None or pd.isna(value) else f"{value:.{digits}f}"


def score_change(old: float | None, new: float | None) -> str:
    """A score's change with its sign and whether it is better (scores: higher is better)."""
    if old is None or new is None or pd.isna(old) or pd.isna(new):
        return MISSING
    delta = new - old
    if round(delta, 4) == 0:
        return "= same"
    return f"{delta:+.4f} " + ("✅ better" if delta > 0 else "❌ worse")


def timing_change(old: float | None, new: float | None) -> str:
    """A timing's change in percent; within TIMING_NOISE it is read as noise, not a change."""
    if not old or new is None or pd.isna(old) or pd.isna(new):
        return MISSING
    relative = (new - old) / old
    if abs(relative) <= TIMING_NOISE:
        return f"{relative:+.0%} ≈ noise"
    return f"{relative:+.0%} " + ("✅ faster" if relative < 0 else "❌ slower")


def _metrics_rows(
    baseline: dict[str, Any], target: dict[str, Any]
) -> tuple[list[list[str]], list[list[str]]]:
    scores, timings = [], []
    for model in (m for m in MODELS if m in baseline or m in target):
        old, new = baseline.get(model, {}), target.get(model, {})
        for key, label in SCORES.items():
            if key in old or key in new:
                cells = [_number(old.get(key), 4), _number(new.get(key), 4)]
                scores.append([model, label, *cells, score_change(old.get(key), new.get(key))])
        for key, label in TIMINGS.items():
            if key in old or key in new:
                cells = [_number(old.get(key), 2), _number(new.get(key), 2)]
                timings.append([model, label, *cells, timing_change(old.get(key), new.get(key))])
    return scores, timings


def params_changes(baseline: dict[str, Any], target: dict[str, Any]) -> list[list[str]]:
    """Every dotted param whose value differs (or exists on one side only)."""
    missing = object()
    rows = []
    for key in sorted(baseline.keys() | target.keys()):
        old, new = baseline.get(key, missing), target.get(key, missing)
        if old != new:
            shown = ["(absent)" if v is missing else f"`{json.dumps(v)}`" for v in (old, new)]
            rows.append([f"`{key}`", *shown])
    return rows


def per_class_changes(
    baseline: pd.DataFrame | None, target: pd.DataFrame | None, model: str
) -> pd.DataFrame:
    """Per product type code: name, test products, F1 of each run and its change."""

    def part(frame: pd.DataFrame | None) -> pd.DataFrame:
        if frame is None:
            return pd.DataFrame(columns=["name", "support", "f1"])
        return frame[frame["model"] == model].set_index("prdtypecode")[["name", "support", "f1"]]

    old, new = part(baseline), part(target)
    table = pd.DataFrame(
        {
            "name": new["name"].combine_first(old["name"]),
            "support": new["support"].combine_first(old["support"]),
            "baseline": old["f1"],
            "target": new["f1"],
        }
    )
    table["change"] = table["target"] - table["baseline"]
    return table.sort_index()


def _per_class_section(changes: pd.DataFrame, model: str, columns: list[str]) -> list[str]:
    moved = changes[changes["change"].round(4) != 0].sort_values("change")
    if moved.empty:
        return [f"{model}: the F1 of every product type is the same in both runs.", ""]
    rows = [
        [
            f"{code} {row['name']}",
            _number(row["support"], 0),
            _number(row["baseline"], 4),
            _number(row["target"], 4),
            score_change(row["baseline"], row["target"]),
        ]
        for code, row in moved.iterrows()
    ]
    same = len(changes) - len(moved)
    header = ["product type", "test products", *columns, "change"]
    note = f"{len(moved)} product types changed (worst first), {same} unchanged."
    return [note, "", *_table(header, rows)]


def _image(name: str, alt: str) -> str:
    return f"![{alt}]({name})"


def _summary(baseline: Run, target: Run, old: dict, new: dict) -> list[str]:
    """Title, what is compared, and the one number most people look for first."""
    before = old.get("fusion", {}).get("f1_weighted")
    after = new.get("fusion", {}).get("f1_weighted")
    lines = [
        f"# {target.spec} compared with {baseline.spec}",
        "",
        f"- baseline: {baseline.title}",
        f"- compared: {target.title}",
        f"- written: {datetime.now(UTC).isoformat(timespec='seconds')}",
        "",
        f"**Weighted F1 of the fusion model (the challenge's metric): {_number(before, 4)} → "
        f"{_number(after, 4)}, {score_change(before, after)}.**",
        "",
    ]
    products, photos = new.get("fusion", {}).get("n"), new.get("image", {}).get("n")
    scored = f"Scored on {products} held-out test products, {photos} of them with a photo"
    if products and products < SMALL_TEST_SPLIT:
        scored += ": one product more or less right moves a product type's F1 a lot"
    lines += [f"{scored}.", ""]
    if (before_products := old.get("fusion", {}).get("n")) != products:
        lines += [
            f"⚠️ The test splits differ ({before_products} products in {baseline.spec}, "
            f"{products} in {target.spec}): the scores are not measured on the same products.",
            "",
        ]
    return lines


def _metrics_section(old: dict, new: dict, columns: list[str]) -> list[str]:
    scores, timings = _metrics_rows(old, new)
    return [
        "## Metrics on the held-out test split",
        "",
        *_table(["model", "metric", *columns, "change"], scores),
        "`fusion_with_photo` is the fusion model on the test products that have a photo; "
        "`image` is scored on those products only.",
        "",
        "### Inference time",
        "",
        *(_table(["model", "timing", *columns, "change"], timings) if timings else []),
        f"Timings are measured on the machine that ran each side; changes within "
        f"±{TIMING_NOISE:.0%} are noise. Runs of this version keep them out of their committed "
        "files (metrics/timing.json is this machine's, git-ignored): compare speed with "
        "`make bench` on one machine.",
        "",
    ]


def _confusion_section(baseline: Run, target: Run, columns: list[str], out_dir: Path) -> list[str]:
    """The confusion matrices each run's predict stage drew, side by side."""
    rows = []
    for model in PER_CLASS_MODELS:
        cells = []
        for side, run in (("baseline", baseline), ("target", target)):
            source = run.root / config.PLOTS_DIR / f"confusion_{model}.png"
            if source.exists():
                name = f"confusion_{model}_{side}.png"
                shutil.copy2(source, out_dir / name)
                cells.append(_image(name, f"{model} confusion matrix, {run.spec}"))
            else:
                cells.append("(not in this run)")
        rows.append([model, *cells])
    heading = "### Confusion matrices (test split; rows: actual, columns: predicted)"
    return [heading, "", *_table(["model", *columns], rows)]


def _training_section(baseline: Run, target: Run, out_dir: Path) -> list[str]:
    histories = {
        f"{stage.removeprefix('train_')}, {run.spec}": read_dvclive_history(
            run.root / config.DVCLIVE_DIR / stage
        )
        for stage in KERAS_STAGES
        for run in (baseline, target)
    }
    if not any(len(frame) for frame in histories.values()):
        return ["### Training curves", "", "Neither run trained a Keras model epoch by epoch.", ""]
    plot_training_curves(histories, out_dir / "training_curves.png")
    return ["### Training curves", "", _image("training_curves.png", "training curves"), ""]


def build_report(baseline: Run, target: Run, out_dir: Path) -> str:
    """The Markdown of the comparison; its PNGs are written into `out_dir` beside it."""
    old, new = read_test_metrics(baseline), read_test_metrics(target)
    columns = [f"{baseline.spec} (baseline)", target.spec]
    lines = _summary(baseline, target, old, new) + _metrics_section(old, new, columns)

    changed = params_changes(read_params(baseline), read_params(target))
    lines += ["## Parameters that differ", ""]
    lines += _table(["param", *columns], changed) if changed else ["No parameter differs.", ""]

    old_classes, new_classes = read_per_class(baseline), read_per_class(target)
    changes = {
        model: frame
        for model in PER_CLASS_MODELS
        if len(frame := per_class_changes(old_classes, new_classes, model))
    }
    moved = [model for model, frame in changes.items() if (frame["change"].round(4) != 0).any()]
    lines += ["## F1 per product type", ""]
    if not moved:
        lines += ["Every product type has the same F1 in both runs, for every model.", ""]
    for position, (model, frame) in enumerate(changes.items() if moved else ()):
        section = _per_class_section(frame, model, columns)
        if position == 0:
            lines += [f"### {model}", "", *section]
        else:  # folded: the fusion model is the one that is served
            lines += [f"<details><summary>{model}</summary>", "", *section, "</details>", ""]

    lines += [PLOTS_HEADING, ""]
    if moved:
        title = f"F1 change per product type, {target.spec} vs {baseline.spec}"
        plot_f1_change({model: changes[model] for model in moved}, out_dir / "f1_change.png", title)
        lines += ["### F1 change per product type", "", _image("f1_change.png", title), ""]
    lines += _confusion_section(baseline, target, columns, out_dir)
    lines += _training_section(baseline, target, out_dir)
    return "\n".join(lines).rstrip() + "\n"


def _html(markdown: str, title: str, out_dir: Path) -> str:
    """The report as one HTML file that opens offline: images embedded, no scripts, no CDN."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    for name in sorted(path.name for path in out_dir.glob("*.png")):
        data = base64.b64encode((out_dir / name).read_bytes()).decode()
        body = body.replace(f'src="{name}"', f'src="data:image/png;base64,{data}"')
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{style}</style>'
    return f'<!DOCTYPE html>\n<html lang="en"><head>{head}</head><body>\n{body}</body></html>\n'


def write_report(
    project: Path,
    baseline: str,
    target: str = WORKSPACE,
    out: Path | None = None,
    with_html: bool = True,
) -> Path:
    """Compare `target` (default: the workspace) with `baseline` (a git revision or DVC
    experiment) into `out` (report.md, PNGs, report.html), written as a whole or not at all."""
    project = Path(project)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{target}-vs-{baseline}")
    out = Path(out) if out is not None else project / config.REPORTS_DIR / safe
    with atomic_dir(out) as tmp:
        scratch = tmp / ".runs"
        old, new = load_run(project, baseline, scratch), load_run(project, target, scratch)
        markdown = build_report(old, new, tmp)
        shutil.rmtree(scratch, ignore_errors=True)
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        if with_html:
            title = f"{target} compared with {baseline}"
            (tmp / "report.html").write_text(_html(markdown, title, tmp), encoding="utf-8")
    logger.info("report of %s against %s written to %s", target, baseline, out)
    return out / "report.md"


# --- experiments as a table -------------------------------------------------------------------


def _experiment_row(
    entry: dict[str, Any], kind: str, baseline: str | None, state: str | None
) -> dict[str, Any]:
    data = entry.get("data") or {}
    row: dict[str, Any] = {
        "name": entry.get("name") or (WORKSPACE if kind == WORKSPACE else entry["rev"][:7]),
        "rev": entry["rev"],
        "kind": kind,
        "baseline": baseline,
        "state": state,
        "created": data.get("timestamp"),
    }
    for file, values in (data.get("params") or {}).items():
        prefix = "" if file == str(config.PARAMS_FILE) else f"{file}:"
        row.update({prefix + k: v for k, v in _flatten(values.get("data") or {}).items()})
    for file, values in (data.get("metrics") or {}).items():
        row.update({f"{file}:{k}": v for k, v in _flatten(values.get("data") or {}).items()})
    return row


def experiments_table(project: Path = Path("."), all_commits: bool = False) -> pd.DataFrame:
    """`dvc exp show --json` as one row per workspace, commit and experiment: `name`, `rev`,
    `kind` (workspace, commit or experiment), `baseline` (the commit an experiment started
    from), `state` (an experiment's: queued, running, success, failed), `created`; then each
    param by its dotted name (`train_fusion.method`) and each metric as `<file>:<key>`
    (`metrics/test.json:fusion.f1_weighted`)."""
    args = [_dvc(), "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    result = subprocess.run(args, cwd=project, capture_output=True, text=True, check=False)
    if result.returncode:
        raise ReportError(f"`{' '.join(args)}` failed in {project}: {result.stderr.strip()}")
    rows = []
    for commit in json.loads(result.stdout):
        kind = WORKSPACE if commit["rev"] == WORKSPACE else "commit"
        rows.append(_experiment_row(commit, kind, None, None))
        for experiment in commit.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state", "success")
            rows.extend(
                _experiment_row(rev, "experiment", commit["rev"], state)
                for rev in experiment["revs"]
            )
    return pd.DataFrame(rows)
