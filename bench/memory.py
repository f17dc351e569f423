"""Peak memory of the pipeline's data steps on a scaled synthetic copy of the full data set.

    python bench/memory.py [--rows 84916] [--test-rows 13812] [--photos 1000 --photos 3000]

Builds the copy (bench/synthetic.py), runs the real stage scripts on it as child processes and
prints each one's peak resident memory (the kernel's maxrss of that child):
- import_raw (the copy as `data.sample_dir`: CSVs copied, photos archived) and make_dataset
  (reads the CSVs, checks all ~99k photos) on every row;
- image_features and train_image (tf.data photo pipeline, pretrained backbone, validation
  photos through the whole model) on the first N labelled photos for each `--photos` N, as CPU
  time for 85k photos through the backbone is about 40 minutes. A straight line through those
  points gives the estimate for every labelled photo of the full data set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import typer
import yaml
from synthetic import FULL_TEST_ROWS, FULL_TRAIN_ROWS, REPO, build_synthetic_copy

from rakuten_classifier import config


def run_step(name: str, args: list[str], cwd: Path) -> tuple[float, float]:
    """Run one stage script; return its peak RSS in MiB and its wall time in seconds."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAKUTEN_LOG_LEVEL": "WARNING"}
    started = time.perf_counter()
    with open(cwd / f"{name}.log", "wb") as log:
        child = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        # wait4 gives the resource usage of this one child (getrusage would give the
        # largest over every child so far).
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{name} failed ({child.returncode}); see {cwd / f'{name}.log'}")
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    print(f"  {name:32s} peak RSS {peak:7.0f} MiB   {seconds:6.0f} s", flush=True)
    return peak, seconds


def capped_splits(processed: Path, dest: Path, photos: int) -> int:
    """The same splits cut to about `photos` labelled photos in all (shares kept)."""
    dest.mkdir(parents=True, exist_ok=True)
    total = sum(len(pd.read_parquet(config.split_path(s, processed))) for s in config.SPLITS)
    kept = 0
    for split in config.SPLITS:
        frame = pd.read_parquet(config.split_path(split, processed))
        part = frame.head(round(len(frame) * photos / total))
        part.to_parquet(config.split_path(split, dest))
        kept += int(part["has_image"].sum())
    shutil.copy2(processed / config.LABELS_JSON, dest / config.LABELS_JSON)
    return kept


def main(
    rows: int = FULL_TRAIN_ROWS,
    test_rows: int = FULL_TEST_ROWS,
    photos: list[int] = typer.Option([1000, 3000], help="labelled photos per image run"),
    work_dir: Path | None = None,
) -> None:
    work = Path(work_dir or tempfile.mkdtemp(prefix="bench-memory-"))
    project = work / "project"
    project.mkdir(parents=True, exist_ok=True)
    synthetic = work / "synthetic"
    params = yaml.safe_load((REPO / config.PARAMS_FILE).read_text())
    params["data"]["sample_dir"] = str(synthetic)
    (project / config.PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    stages = REPO / "stages"
    try:
        if not synthetic.exists():
            build_synthetic_copy(synthetic, rows, test_rows)
        print(f"\n{os.cpu_count()} CPUs; steps on {rows} + {test_rows} products", flush=True)
        run_step("import_raw (all rows)", [str(stages / "import_raw.py")], project)
        run_step("make_dataset (all rows)", [str(stages / "make_dataset.py")], project)
        points: dict[str, list[tuple[int, float]]] = {"image_features": [], "train_image": []}
        for cap in photos:
            processed = project / "data" / f"processed-{cap}"
            features = project / "data" / f"features-{cap}"
            kept = capped_splits(project / config.PROCESSED_DIR, processed, cap)
            options = ["--processed-dir", str(processed)]
            peak, _ = run_step(
                f"image_features ({kept} photos)",
                [str(stages / "image_features.py"), *options, "--out-dir", str(features)],
                project,
            )
            points["image_features"].append((kept, peak))
            peak, _ = run_step(
                f"train_image ({kept} photos)",
                [
                    str(stages / "train_image.py"),
                    *options,
                    "--features-dir",
                    str(features),
                    "--out-dir",
                    str(project / "models" / f"image-{cap}"),
                ],
                project,
            )
            points["train_image"].append((kept, peak))
        if len(photos) > 1:
            print(f"\nstraight-line estimate for {rows} labelled photos:", flush=True)
            for step, measured in points.items():
                counts, peaks = zip(*measured, strict=True)
                slope, intercept = np.polyfit(counts, peaks, 1)
                estimate = intercept + slope * rows
                print(
                    f"  {step:16s} {intercept:6.0f} MiB + {slope * 1024:6.1f} KiB/photo "
                    f"-> {estimate:7.0f} MiB",
                    flush=True,
                )
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
