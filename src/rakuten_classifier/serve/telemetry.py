"""What the API tells its operators: one JSON log line per event with the request id, and
Prometheus metrics (in a registry of the app's own, so two apps never share counters)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rakuten_classifier import config
from rakuten_classifier.config import logger
from rakuten_classifier.store.writer import StoreWriter

REQUEST_ID_HEADER = "X-Request-ID"
# An incoming id is kept only if it is short and plain: it goes into every log line.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else came through `extra=` and is logged as a field
# (but uvicorn's copy of its message with terminal colour codes).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (current := request_id.get()) is not None:
            entry["request_id"] = current
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str | None = None) -> None:
    """The package's logger and uvicorn's write JSON lines to stderr. Uvicorn's access log is
    silenced: RequestContext logs every request, with its id."""
    config.setup_logging(level)
    formatter = JsonFormatter()
    for handler in logger.handlers:
        handler.setFormatter(formatter)
    for name, name_level in (("uvicorn", logger.level), ("uvicorn.access", logging.WARNING)):
        server_logger = logging.getLogger(name)
        server_logger.handlers = list(logger.handlers)
        server_logger.setLevel(name_level)
        server_logger.propagate = False


class Metrics:
    """The API's Prometheus metrics (GET /metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        by_request = ["endpoint", "method", "status", "variant"]
        self.requests = Counter(
            "rakuten_api_requests", "HTTP requests", by_request, registry=self.registry
        )
        self.latency = Histogram(
            "rakuten_api_request_duration_seconds",
            "Time from request to response",
            by_request,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.predictions = Counter(
            "rakuten_api_predictions",
            "Products classified, by predicted product type, modalities used and model",
            ["prdtypecode", "modalities", "variant", "model_version"],
            registry=self.registry,
        )
        self.shadow = Counter(
            "rakuten_api_shadow_predictions",
            "Challenger predictions made in the shadow of the champion, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "rakuten_api_errors",
            "Refused requests and products, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.model_batch = Histogram(
            "rakuten_api_model_batch_products",
            "Products per model call (requests that wait together are predicted together)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.model = Gauge(
            "rakuten_api_model_info",
            "The model bundles served: 1 per variant",
            ["variant", "version", "registry_version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "rakuten_api_model_reloads",
            "Model reloads (an alias check or POST /admin/reload), by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.registry_up = Gauge(
            "rakuten_api_registry_up",
            "1 if the last look at the model registry succeeded (or none is used), else 0",
            registry=self.registry,
        )
        self.registry_up.set(1)
        self.feedback = Counter(
            "rakuten_api_feedback", "Feedback accepted (true product types)", registry=self.registry
        )

    def watch_store(self, writer: StoreWriter) -> None:
        self.registry.register(StoreCollector(writer))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StoreCollector(Collector):
    """The prediction store's writer, read at each scrape."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer

    def collect(self) -> Any:
        backlog = GaugeMetricFamily(
            "rakuten_store_backlog",
            "Rows accepted for the store and not yet in the database (memory and spool)",
        )
        backlog.add_metric([], self.writer.backlog)
        spooled = GaugeMetricFamily(
            "rakuten_store_spooled", "Rows waiting on disk while the database is down"
        )
        spooled.add_metric([], self.writer.spool.rows)
        up = GaugeMetricFamily("rakuten_store_up", "1 if the last write to the database worked")
        up.add_metric([], 1.0 if self.writer.stats.up else 0.0)
        written = CounterMetricFamily(
            "rakuten_store_written", "Rows written to the database", labels=["table"]
        )
        for table in ("predictions", "feedback"):
            written.add_metric([table], self.writer.stats.written[table])
        dropped = CounterMetricFamily(
            "rakuten_store_dropped", "Prediction rows dropped: the spool was full"
        )
        dropped.add_metric([], self.writer.stats.dropped)
        yield from (backlog, spooled, up, written, dropped)


class RequestContext:
    """ASGI middleware around every request: request id (the client's X-Request-ID if plain,
    else a new one) in the logs and the response, one log line and the metrics per request,
    and a JSON 500 for anything unexpected."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), ""
        )
        current = incoming if _CLIENT_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["started"] = current, time.perf_counter()
        reset = request_id.set(current)
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                header = (REQUEST_ID_HEADER.lower().encode(), current.encode())
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unexpected error")
            self.metrics.errors.labels("internal").inc()
            if not started:
                body = {"error": "internal", "detail": "internal server error"}
                await JSONResponse({**body, "request_id": current}, 500)(
                    scope, receive, send_with_id
                )
        finally:
            self._record(scope, status, time.perf_counter() - state["started"])
            request_id.reset(reset)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        variant = scope["state"].get("variant", "")
        labels = (endpoint, scope["method"], str(status), variant)
        self.metrics.requests.labels(*labels).inc()
        self.metrics.latency.labels(*labels).observe(seconds)
        client = scope.get("client")
        logger.info(
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "user": scope["state"].get("user"),
                "client": client[0] if client else None,
                "variant": variant or None,
                "model_version": scope["state"].get("model_version"),
            },
        )
