"""Batch prediction on a Dask cluster, for catalogues too big for one process.

The products are cut into partitions of whole batches (so each batch, and hence each number,
is the one a single process computes); every worker loads the bundle once and writes each
partition it predicts to its own file, atomically. A partition lost with a killed worker is
run again elsewhere and rewrites the same bytes under the same name; the output is assembled,
atomically too, only once every partition is in. The partitions live in a folder named after
the run's inputs, so a client that dies can rerun the command and only the missing partitions
are predicted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rakuten_classifier.bundle import Bundle, load_bundle, predict_frame, read_manifest
from rakuten_classifier.cluster import ModelOnWorker, rows_of, run_partitions, worker_model
from rakuten_classifier.config import logger
from rakuten_classifier.data import image_paths, read_products, write_predictions_csv
from rakuten_classifier.files import atomic_path, sha256_file
from rakuten_classifier.litert import THREADS_VARIABLE
from rakuten_classifier.preprocess import absolute_location


class BundleOnWorker(ModelOnWorker):
    name = "rakuten-bundle"

    def __init__(self, bundle_dir: Path) -> None:
        super().__init__()
        self.bundle_dir = str(bundle_dir)

    def setup(self, worker: object) -> None:
        super().setup(worker)
        # The photo model's kernels use the worker's threads, not every core: the machine's
        # other workers have theirs (an explicit RAKUTEN_IMAGE_THREADS wins).
        os.environ.setdefault(THREADS_VARIABLE, str(worker.state.nthreads))

    def load(self) -> Bundle:
        return load_bundle(Path(self.bundle_dir))


@dataclass(frozen=True)
class PartitionDone:
    with_photo: int


def predict_partition(products: pd.DataFrame, part_file: str, batch_size: int) -> PartitionDone:
    """Runs on a worker: predict one partition and write it (index,prdtypecode,probability)."""
    bundle = worker_model(BundleOnWorker.name)
    frame, prediction = predict_frame(bundle, products, batch_size, progress=False)
    write_predictions_csv(Path(part_file), frame)
    return PartitionDone(int(prediction.image_used.sum()))


def parts_folder(
    out: Path, x_csv: Path, image_dir: str | Path, bundle_dir: Path, rows: int
) -> Path:
    """Where a run's partitions go: beside the output, named after everything that decides
    their bytes, so a rerun of the same command finds (and keeps) the finished ones."""
    key = "|".join(
        [sha256_file(x_csv), str(image_dir), read_manifest(bundle_dir)["model_version"], str(rows)]
    )
    return out.parent / f".{out.name}.parts-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def concatenate_parts(part_files: list[Path], out: Path) -> None:
    """The partitions' CSVs, in order and with one header, as the output (atomically)."""
    with atomic_path(out) as tmp, tmp.open("wb") as sink:
        for number, part in enumerate(part_files):
            with part.open("rb") as source:
                header = source.readline()
                if number == 0:
                    sink.write(header)
                shutil.copyfileobj(source, sink)


def predict_csv_on_cluster(
    scheduler: str,
    bundle_dir: Path,
    x_csv: Path,
    image_dir: str | Path,
    out: Path,
    batch_size: int = 64,
    partition_rows: int = 2048,
) -> int:
    """The batch command on the cluster at `scheduler`; the photos' folder (or archive) must be
    readable by every worker under the same path. Returns the number of products predicted."""
    products = read_products(x_csv)
    # Absolute: a worker runs in another folder (and machine: shared storage, same paths).
    products["image_path"] = image_paths(products, absolute_location(image_dir))
    rows = rows_of(partition_rows, batch_size)
    parts_dir = parts_folder(out, x_csv, image_dir, bundle_dir, rows)
    parts_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(products), rows)
    part_files = [parts_dir / f"part-{number:06d}.csv" for number in range(len(starts))]
    todo = [(s, f) for s, f in zip(starts, part_files, strict=True) if not f.exists()]
    logger.info(
        "%d products in %d partitions of %d on %s (%d already done in %s)",
        len(products),
        len(part_files),
        rows,
        scheduler,
        len(part_files) - len(todo),
        parts_dir,
    )
    chunks = [products.iloc[start : start + rows] for start, _ in todo]
    done = run_partitions(
        scheduler,
        BundleOnWorker(bundle_dir.resolve()),
        predict_partition,
        [(chunk, str(f.resolve()), batch_size) for chunk, (_, f) in zip(chunks, todo, strict=True)],
        "predict",
        [len(chunk) for chunk in chunks],
        "product",
    )
    concatenate_parts(part_files, out)
    shutil.rmtree(parts_dir)
    logger.info(
        "%d products predicted into %s on the cluster (%d partitions now, %d with a photo)",
        len(products),
        out,
        len(done),
        sum(part.with_photo for part in done),
    )
    return len(products)
