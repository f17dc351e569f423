"""`make bench`: the pipeline's wall time and peak memory per stage on the embedded sample, and
the prediction speed (bench/speed.py: the photo path against references measured in the same
run, the text path, start-up), each printed as a table beside the previous run's figures on
this machine (.bench/).

The pipeline runs in a temporary copy of the project (code, params, sample): the workspace's
outputs and metrics stay as they are. Each stage is forced on its own
(`dvc repro --force --single-item <stage>`), so a figure is that stage's alone, DVC's start-up
included; its peak memory is the largest resident set of the stage's processes.

    python bench/pipeline.py                          # the pipeline, then its bundle
    python bench/pipeline.py --bundle models/bundle   # throughput of an existing bundle only
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
import yaml
from speed import REPEATS, measure, report_rows

from rakuten_classifier import config
from rakuten_classifier.files import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
HISTORY_DIR = ROOT / ".bench"
LAST_RUN = HISTORY_DIR / "pipeline.json"
# What a copy of the project needs to run `dvc repro` on the sample.
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", "stages", "src", "data/sample")


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()}"


def resident_mib(pid: int | str = "self") -> tuple[float, float]:
    """A process's resident memory now and at its peak (Linux: VmRSS and VmHWM), in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM"))


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=dest, check=True)
    return dest


def time_stage(stage: str, project: Path, log: Path) -> dict[str, float]:
    """Wall seconds and peak resident MiB of `dvc repro` forced on one stage. wait4 reports
    the largest resident set among the process and the children it waited for (the stage)."""
    with open(log, "ab") as output:
        start = time.perf_counter()
        process = subprocess.Popen(
            ["dvc", "repro", "--force", "--single-item", stage],
            cwd=project,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"stage {stage} failed ({process.returncode}); log {log}:\n{tail}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def bench_pipeline(project: Path) -> dict[str, dict[str, float]]:
    stages = list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    log = project / "bench.log"
    figures = {}
    for stage in stages:
        figures[stage] = time_stage(stage, project, log)
        print(f"  {stage}: {figures[stage]['wall_s']} s", flush=True)
    return figures


def _change(new: float, old: float | None) -> str:
    if not old:
        return ""
    change = (new - old) / old
    return "0%" if round(change, 2) == 0 else f"{change:+.0%}"


def _figure(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """A plain-text table: first column left-aligned, the figures right-aligned."""
    table = [header, *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"\n{title}")
    for position, row in enumerate(table):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells).rstrip())
        if position == 0:
            print("  ".join("-" * width for width in widths))


def _previous_note(section: dict[str, Any], before: dict[str, Any]) -> str:
    if not before:
        return "no previous run"
    note = f"previous: {before['when']}"
    return note if before["machine"] == section["machine"] else f"{note}, on {before['machine']}"


def print_pipeline(section: dict[str, Any], before: dict[str, Any]) -> None:
    old = before.get("figures", {})
    rows = []
    for stage, figures in section["figures"].items():
        was = old.get(stage, {})
        rows.append(
            [
                stage,
                _figure(figures["wall_s"], 1),
                _figure(was.get("wall_s"), 1),
                _change(figures["wall_s"], was.get("wall_s")),
                _figure(figures["peak_rss_mib"], 0),
                _figure(was.get("peak_rss_mib"), 0),
                _change(figures["peak_rss_mib"], was.get("peak_rss_mib")),
            ]
        )
    total = sum(figures["wall_s"] for figures in section["figures"].values())
    old_total = sum(figures["wall_s"] for figures in old.values()) or None
    rows.append(
        ["total", _figure(total, 1), _figure(old_total, 1), _change(total, old_total), "", "", ""]
    )
    print_table(
        f"dvc repro --force on the sample, one stage at a time ({_previous_note(section, before)})",
        ["stage", "wall s", "previous", "change", "peak RSS MiB", "previous", "change"],
        rows,
    )


def print_prediction(section: dict[str, Any], before: dict[str, Any]) -> None:
    rows = report_rows(section["figures"], before.get("figures", {}))
    print_table(
        f"Prediction speed, median of {REPEATS} passes; ratios against references measured "
        f"in this run ({_previous_note(section, before)})",
        ["figure", "value", "reference", "ratio", "previous"],
        rows,
    )


def main(
    bundle: Path | None = typer.Option(
        None, help="Measure the throughput of this bundle only, without running the pipeline."
    ),
) -> None:
    config.setup_logging("WARNING")
    previous = read_json(LAST_RUN) if LAST_RUN.exists() else {}
    stamp = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    current: dict[str, Any] = {}
    print(f"machine: {stamp['machine']}")
    with tempfile.TemporaryDirectory(prefix="rakuten-bench-") as scratch:
        if bundle is None:
            project = copy_project(Path(scratch) / "project")
            print(f"dvc repro, stage by stage, in {project}")
            current["pipeline"] = {**stamp, "figures": bench_pipeline(project)}
            bundle = project / config.BUNDLE_DIR
        current["prediction"] = {**stamp, "figures": measure(bundle, ROOT / config.SAMPLE_DIR)}
    if "pipeline" in current:
        print_pipeline(current["pipeline"], previous.get("pipeline", {}))
    print_prediction(current["prediction"], previous.get("prediction", {}))
    # Each part keeps its own latest figures: a throughput-only run leaves the pipeline's.
    write_json(LAST_RUN, {**previous, **current})
    with open(HISTORY_DIR / "history.jsonl", "a", encoding="utf-8") as history:
        history.write(json.dumps(current) + "\n")
    print(f"\nfigures kept in {LAST_RUN}, history in {HISTORY_DIR / 'history.jsonl'}")


if __name__ == "__main__":
    typer.run(main)
