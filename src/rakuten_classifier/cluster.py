"""Work in partitions on a Dask cluster: the mechanics batch prediction (cluster_predict) and
the backbone pass (cluster_features) share.

A model is loaded at most once per worker process by a worker plugin, lazily, on the worker's
first partition (loading in the plugin's `setup` would block the worker's event loop, and its
heartbeats, while TensorFlow starts). Partitions are submitted with stable keys; a partition
whose worker dies is given to another by the scheduler, and one that raises is retried a few
times, then the error reaches the caller. Results come back in the partitions' order.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client, WorkerPlugin, as_completed, get_worker
from tqdm import tqdm

from rakuten_classifier.config import setup_logging

# The scheduler of a cluster to run on; unset: everything runs in this process.
SCHEDULER_VARIABLE = "RAKUTEN_DASK_SCHEDULER"
# A partition that raises is run again this many times before the run fails.
PARTITION_RETRIES = 3


class ModelOnWorker(WorkerPlugin):
    """One model per worker process, built by `load()` (a subclass's) on first use."""

    name = "rakuten-model"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if key not in ("_model", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._model, self._lock = None, threading.Lock()

    def setup(self, worker: object) -> None:
        setup_logging()  # the worker's log then says what it loaded, and when

    def load(self) -> Any:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self.load()
            return self._model


def worker_model(name: str) -> Any:
    """Inside a task: the model the plugin `name` holds on this worker."""
    return get_worker().plugins[name].model


def rows_of(partition_rows: int, batch_size: int) -> int:
    """Partitions hold whole batches: a batch's numbers then match the single-process run's."""
    return max(1, -(-partition_rows // batch_size)) * batch_size


def run_partitions(
    scheduler: str,
    plugin: ModelOnWorker,
    function: Callable[..., Any],
    partitions: Sequence[tuple[Any, ...]],
    key: str,
    sizes: Sequence[int],
    unit: str,
) -> list[Any]:
    """`function(*partition)` for each partition on the cluster at `scheduler`, with a progress
    bar counting `sizes` (a partition's items); the results in the partitions' order."""
    results: list[Any] = [None] * len(partitions)
    run = uuid.uuid4().hex[:8]  # two runs of the same work on one scheduler keep apart
    with (
        Client(scheduler, timeout="60s") as client,
        tqdm(total=sum(sizes), desc=key, unit=unit) as bar,
    ):
        client.register_plugin(plugin, name=plugin.name)
        futures = {
            client.submit(
                function,
                *arguments,
                key=f"{key}-{run}-{number:06d}",
                retries=PARTITION_RETRIES,
                pure=False,
            ): number
            for number, arguments in enumerate(partitions)
        }
        for future in as_completed(futures):
            number = futures[future]
            results[number] = future.result()
            bar.update(sizes[number])
    return results
