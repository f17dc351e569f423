"""The whole pipeline at the full data set's size: every stage's wall time and peak memory on a
scaled synthetic copy (bench/synthetic.py), and the backbone pass on a local Dask cluster.

    python bench/memory.py [--rows 84916] [--test-rows 13812] [--photos 1000 --photos 3000]

The real stage scripts run as child processes; each one's peak is the kernel's maxrss of that
child. On every row: import_raw, make_dataset (it checks all ~99k photos), tokenize and
train_text. The stages whose cost grows with the photos (image_features, train_image,
train_fusion with its 5-fold out-of-fold fits, predict with its refit) run on the same splits
cut to about N labelled photos for each `--photos` N (rows cut in proportion), as CPU time for
85k photos through the backbone is close to an hour here; a straight line through those points
gives the full-size estimate. image_features runs a second time on a LocalCluster of
`--workers` single-threaded processes (RAKUTEN_DASK_SCHEDULER), its files checked byte for byte
against the single process's.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import typer
import yaml
from distributed import Client, LocalCluster
from pipeline import resident_mib
from synthetic import FULL_TEST_ROWS, FULL_TRAIN_ROWS, REPO, build_synthetic_copy

from rakuten_classifier import config
from rakuten_classifier.cluster import SCHEDULER_VARIABLE

STAGES = REPO / "stages"
TEXT_STAGES = ("tokenize_text", "train_text")
PHOTO_STAGES = ("image_features", "train_image", "train_fusion", "predict")
LIMIT_MIB = 3 * 1024  # every stage must fit in 3 GB at full size


def run_step(name: str, script: str, cwd: Path, env: dict[str, str] | None = None) -> tuple:
    """Run one stage script in `cwd`; return its peak RSS in MiB and its wall time in s."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAKUTEN_LOG_LEVEL": "INFO", **(env or {})}
    started = time.perf_counter()
    with open(cwd / f"{name}.log", "wb") as log:
        child = subprocess.Popen(
            [sys.executable, str(STAGES / f"{script}.py")],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # wait4: the resource usage of this one child (getrusage: the largest of all so far).
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name} failed; see {cwd / f'{name}.log'}")
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    print(f"  {name:40s} peak RSS {peak:7.0f} MiB   {seconds:6.0f} s", flush=True)
    return peak, seconds


def derived_project(
    project: Path, name: str, photos: int, cut: Callable[[pd.DataFrame, int], pd.DataFrame]
) -> Path:
    """A project of its own beside `project`, sharing its raw data, whose every split is
    `cut(frame, rows)`, with `rows` that split's share of about `photos` labelled photos."""
    dest = project.parent / name
    shutil.rmtree(dest, ignore_errors=True)  # a run stopped halfway left one (--work-dir)
    processed = dest / config.PROCESSED_DIR
    processed.mkdir(parents=True, exist_ok=True)
    shutil.copy2(project / config.PARAMS_FILE, dest / config.PARAMS_FILE)
    (dest / config.RAW_DIR).symlink_to(project / config.RAW_DIR)
    source = project / config.PROCESSED_DIR
    labelled = sum(len(pd.read_parquet(config.split_path(s, source))) for s in config.SPLITS)
    for split in (*config.SPLITS, config.UNLABELLED):  # every split cut by the same share
        frame = pd.read_parquet(config.split_path(split, source))
        cut(frame, round(len(frame) * photos / labelled)).to_parquet(
            config.split_path(split, processed)
        )
    shutil.copy2(source / config.LABELS_JSON, processed / config.LABELS_JSON)
    return dest


def capped_project(project: Path, photos: int) -> tuple[Path, int]:
    """The full project's splits cut to about `photos` labelled photos in all (shares kept);
    the photos themselves are the full project's. Returns it and its labelled photos."""
    dest = derived_project(
        project, f"project-{photos}", photos, lambda frame, rows: frame.head(rows)
    )
    processed = dest / config.PROCESSED_DIR
    kept = sum(
        int(pd.read_parquet(config.split_path(s, processed))["has_image"].sum())
        for s in config.SPLITS
    )
    return dest, kept


def all_rows_project(project: Path, photos: int) -> Path:
    """Every row of the full project and its trained text model, but about `photos` labelled
    photos (the others count as missing): the photo stages then refit the text model at full
    size, at a fraction of the backbone pass's time."""

    def fewer_photos(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
        frame["has_image"] &= np.arange(len(frame)) < rows
        return frame

    dest = derived_project(project, f"project-all-rows-{photos}", photos, fewer_photos)
    shutil.copytree(project / config.MODELS_DIR, dest / config.MODELS_DIR, dirs_exist_ok=True)
    return dest


def features_on_cluster(project: Path, workers: int, kept: int) -> tuple[float, float, bool]:
    """image_features again with a local cluster: wall s, the workers' largest peak MiB, and
    whether its files are the single process's bytes."""
    single = project / config.FEATURES_DIR
    moved = project / "data" / "features-single"
    single.rename(moved)
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        _, seconds = run_step(
            f"image_features ({kept} photos, {workers} workers)",
            "image_features",
            project,
            {SCHEDULER_VARIABLE: cluster.scheduler_address},
        )
        worker_peak = max(peak for _, peak in client.run(resident_mib).values())
    names = sorted(path.name for path in moved.iterdir())
    same = filecmp.cmpfiles(moved, single, names, shallow=False)[0] == names
    return seconds, worker_peak, same


def main(
    rows: int = FULL_TRAIN_ROWS,
    test_rows: int = FULL_TEST_ROWS,
    photos: list[int] = typer.Option([1000, 3000], help="labelled photos per photo run"),
    workers: int = typer.Option(2, help="Dask workers for the backbone pass"),
    all_rows_photos: int = typer.Option(
        3000, help="photo stages once more on every row with this many photos (0: skip)"
    ),
    work_dir: Path | None = None,
) -> None:
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-memory-"))
    project = work / "project"
    project.mkdir(parents=True, exist_ok=True)
    synthetic = work / "synthetic"
    params = yaml.safe_load((REPO / config.PARAMS_FILE).read_text())
    params["data"]["sample_dir"] = str(synthetic)
    (project / config.PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    measured: dict[str, list[tuple[int, float, float]]] = {s: [] for s in PHOTO_STAGES}
    cluster_runs = []
    try:
        if not synthetic.exists():
            build_synthetic_copy(synthetic, rows, test_rows)
        print(f"\n{os.cpu_count()} CPUs; {rows} + {test_rows} products", flush=True)
        full = {}
        for stage in ("import_raw", "make_dataset", *TEXT_STAGES):
            full[stage] = run_step(f"{stage} (all rows)", stage, project)
        for cap in (cap for cap in photos if cap > 0):  # --photos 0: no capped runs
            capped, kept = capped_project(project, cap)
            for stage in TEXT_STAGES:  # what the photo stages need, at this size
                run_step(f"{stage} ({kept} photos' rows)", stage, capped)
            for stage in PHOTO_STAGES:
                peak, seconds = run_step(f"{stage} ({kept} photos)", stage, capped)
                measured[stage].append((kept, peak, seconds))
            cluster_runs.append((kept, *features_on_cluster(capped, workers, kept)))
        all_rows = {}
        if all_rows_photos:
            everything = all_rows_project(project, all_rows_photos)
            for stage in PHOTO_STAGES:
                label = f"{stage} (all rows, {all_rows_photos} photos)"
                all_rows[stage] = run_step(label, stage, everything)
        report(rows, full, measured, cluster_runs, workers)
        if all_rows:
            print(f"\nphoto stages on all {rows} rows, {all_rows_photos} of them with a photo")
            print("(the text model refit at full size; the photo part as in the capped runs):")
            for stage, (peak, seconds) in all_rows.items():
                fits = "fits" if peak <= LIMIT_MIB else "OVER"
                print(f"  {stage:16s} peak {peak:6.0f} MiB ({fits} in 3 GB), {seconds:5.0f} s")
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(rows: int, full: dict, measured: dict, cluster_runs: list, workers: int) -> None:
    """One table: each stage at full size, measured or extrapolated in a straight line."""
    table = [
        {"stage": stage, "how": "measured", "wall s": s, "peak MiB": peak}
        for stage, (peak, s) in full.items()
    ]
    for stage, points in measured.items():
        if len(points) < 2:
            continue
        counts, peaks, seconds = (np.array(column) for column in zip(*points, strict=True))
        slope, intercept = np.polyfit(counts, peaks, 1)
        # A peak that does not grow with the photos is start-up noise (TensorFlow's allocator):
        # no line through it says anything about the full size.
        table.append(
            {
                "stage": stage,
                "how": f"line through {', '.join(map(str, counts))} photos"
                + ("" if slope > 0 else "; peak did not grow"),
                "wall s": np.polyval(np.polyfit(counts, seconds, 1), rows),
                "peak MiB": intercept + slope * rows if slope > 0 else np.nan,
            }
        )
    frame = pd.DataFrame(table)
    frame["<= 3 GB"] = frame["peak MiB"].map(lambda mib: "?" if np.isnan(mib) else mib <= LIMIT_MIB)
    print(f"\nfull size ({rows} labelled products, one photo each):")
    print(frame.round(0).to_string(index=False))
    print(f"total: {frame['wall s'].sum() / 3600:.1f} h on this machine")
    print(f"\nimage_features on {workers} Dask workers (LocalCluster, one thread each):")
    for kept, seconds, worker_peak, same in cluster_runs:
        single = next(s for n, _, s in measured["image_features"] if n == kept)
        print(
            f"  {kept:6d} photos: {seconds:5.0f} s (1 process: {single:.0f} s, "
            f"{single / seconds:.2f}x); worker peak {worker_peak:.0f} MiB; "
            f"same bytes as 1 process: {same}"
        )


if __name__ == "__main__":  # LocalCluster's worker processes import this module
    typer.run(main)
