"""`make bench-cluster`: batch prediction in one process against a Dask cluster of single-threaded
worker processes on this machine, on the same products: wall time, products per second, the
ratio, and the peak resident memory of the process and of each worker.

The products are the sample's labelled ones (real titles and photos) repeated `--copies` times
under new indices: a synthetic catalogue for a measure of scale, never of quality. Both runs
include loading the bundle (the user's wait); the cluster's answer is checked byte for byte
against the single process's.

    python bench/cluster.py --bundle models/bundle --copies 3 --workers 2
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import typer
from distributed import Client, LocalCluster
from pipeline import machine, resident_mib

from rakuten_classifier import config
from rakuten_classifier.bundle import load_bundle, predict_csv
from rakuten_classifier.cluster_predict import predict_csv_on_cluster

ROOT = Path(__file__).resolve().parents[1]


def catalogue(folder: Path, copies: int) -> Path:
    """The sample's labelled products, `copies` times, as one products CSV."""
    products = pd.read_csv(ROOT / config.SAMPLE_DIR / config.X_TRAIN_CSV, index_col=0)
    frames = [products.set_axis(products.index + n * 10_000_000) for n in range(copies)]
    path = folder / "X.csv"
    pd.concat(frames).to_csv(path)
    return path


def main(
    bundle: Path = typer.Option(config.BUNDLE_DIR, help="The bundle to predict with."),
    copies: int = typer.Option(3, min=1, help="Times the sample's 876 products are repeated."),
    workers: int = typer.Option(2, min=1, help="Worker processes (one thread each)."),
    batch_size: int = typer.Option(64, min=1),
    partition_rows: int = typer.Option(256, min=1),
) -> None:
    photos = ROOT / config.SAMPLE_DIR / config.IMAGE_TRAIN_DIR
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        folder = Path(tmp)
        x_csv = catalogue(folder, copies)
        rows = len(pd.read_csv(x_csv, index_col=0))
        print(f"{rows} products ({copies} copies of the sample), bundle {bundle}", flush=True)

        started = time.perf_counter()
        predict_csv(load_bundle(bundle), x_csv, photos, folder / "single.csv", batch_size)
        single_s = time.perf_counter() - started
        single_mib = resident_mib()[1]

        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            started = time.perf_counter()
            predict_csv_on_cluster(
                cluster.scheduler_address, bundle, x_csv, photos, folder / "cluster.csv",
                batch_size, partition_rows,
            )  # fmt: skip
            cluster_s = time.perf_counter() - started
            worker_mib = {w: peak for w, (_, peak) in client.run(resident_mib).items()}
        same = (folder / "single.csv").read_bytes() == (folder / "cluster.csv").read_bytes()

    print(f"\nmachine: {machine()}; {psutil.virtual_memory().total / 2**30:.0f} GiB")
    table = pd.DataFrame(
        {
            "wall s": [single_s, cluster_s],
            "products/s": [rows / single_s, rows / cluster_s],
            "peak MiB per process": [single_mib, max(worker_mib.values())],
        },
        index=["1 process", f"{workers} workers x 1 thread"],
    ).round(1)
    print(table.to_string())
    print(f"cluster / single process throughput: {single_s / cluster_s:.2f}x")
    print("workers' peak MiB: " + ", ".join(f"{mib:.0f}" for mib in worker_mib.values()))
    print(f"answers identical: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":  # LocalCluster starts worker processes: they import this module
    typer.run(main)
