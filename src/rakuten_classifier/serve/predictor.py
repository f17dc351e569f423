"""The model behind the API: one worker thread runs `Bundle.predict_prepared`, the function
the batch command uses, and requests that arrive while it is busy share its next call. Each
request's photos are decoded beforehand in its own thread (`Bundle.prepare`), so decoding
overlaps the models' work instead of queueing behind it; a request without a photo is
prepared on the event loop (its texts cleaned: microseconds).

Grouping adds no waiting (the worker takes whatever is queued when it becomes free) and
changes no answer: every product's row is computed on its own at each step (text model,
photo model, fusion). On a busy server it makes a product several times cheaper (the text
model and TensorFlow have a fixed cost per call), and one thread keeps the models from
competing for the cores.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from rakuten_classifier.bundle import Bundle, BundlePrediction, PreparedProducts
from rakuten_classifier.config import logger
from rakuten_classifier.serve.errors import ApiError
from rakuten_classifier.serve.telemetry import Metrics

GROUP_PRODUCTS = 64  # products per model call at most, as in the batch command


@dataclass
class _Job:
    prepared: PreparedProducts
    future: asyncio.Future = field(repr=False)

    def __len__(self) -> int:
        return len(self.prepared.texts)


class Predictor:
    def __init__(
        self, bundle: Bundle, metrics: Metrics, max_pending: int, name: str = "model"
    ) -> None:
        self.bundle = bundle
        self.metrics = metrics
        self.name = name
        self.max_pending = max_pending
        self._pending = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        """Products given to this predictor and not answered yet."""
        return self._pending

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker after one warm-up call (the first TensorFlow call traces its graph:
        over a second that the first client would otherwise wait)."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        photo = io.BytesIO()
        Image.new("RGB", (64, 64), "white").save(photo, "PNG")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            self._executor, self.bundle.predict_products, ["warm-up"], [""], [photo.getvalue()]
        )
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._work(), name="model-worker")

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop after the requests already given to this predictor are answered (at most
        `drain_seconds`): a model swapped out finishes its work, no request fails."""
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while self._pending and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def predict(
        self,
        designations: Sequence[str],
        descriptions: Sequence[str],
        images: Sequence[bytes | None],
    ) -> tuple[BundlePrediction, int]:
        """The prediction holding these products, and the row of the first of them."""
        if self._queue is None or not self.running:
            raise ApiError(
                503, "not_ready", "the model is not running", headers={"Retry-After": "5"}
            )
        if self._pending + len(designations) > self.max_pending:
            self.metrics.errors.labels("overloaded").inc()
            raise ApiError(
                503,
                "overloaded",
                f"over {self.max_pending} products are waiting for the model; retry shortly",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        self._pending += len(designations)
        try:
            if any(image is not None for image in images):
                prepared = await loop.run_in_executor(
                    None, self.bundle.prepare, designations, descriptions, images
                )
            else:  # texts only: cleaning them costs less than two thread hand-offs
                prepared = self.bundle.prepare(designations, descriptions, images)
            job = _Job(prepared, loop.create_future())
            self._queue.put_nowait(job)
            return await job.future
        finally:
            self._pending -= len(designations)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            size = len(jobs[0])
            while size < GROUP_PRODUCTS and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                size += len(jobs[-1])
            await self._serve([job for job in jobs if not job.future.done()])  # not the gone

    async def _serve(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        try:
            prediction = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, jobs
            )
        except Exception:
            if len(jobs) > 1:
                # One product broke the shared call: each request alone, so only its own fails.
                for job in jobs:
                    await self._serve([job])
                return
            logger.exception("prediction failed")
            if not jobs[0].future.done():
                error = ApiError(500, "internal", "the model failed on this request")
                jobs[0].future.set_exception(error)
            return
        row = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result((prediction, row))
            row += len(job)

    def _run(self, jobs: list[_Job]) -> BundlePrediction:
        self.metrics.model_batch.observe(sum(len(job) for job in jobs))
        return self.bundle.predict_prepared(
            PreparedProducts.concatenate([job.prepared for job in jobs])
        )
