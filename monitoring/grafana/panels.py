"""What the Grafana dashboards show: rows of charts, each a PromQL query (or a few) on the
Prometheus of monitoring/prometheus, its recording rules included. build_dashboards.py turns
them into Grafana's JSON."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Chart:
    """A panel: a time series, or a stat (the latest value, coloured by thresholds)."""

    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)
    width: int = 12
    low: float | None = None
    high: float | None = None


RED_OVER = lambda limit: ((None, "green"), (limit, "red"))  # noqa: E731
RED_UNDER = lambda limit: ((None, "red"), (limit, "green"))  # noqa: E731

API_ROWS = {
    "Traffic": [
        Chart(
            "Requests by status",
            "HTTP requests a second, every endpoint.",
            (Query("sum by (status) (rakuten:requests:rate5m)", "{{status}}"),),
            "reqps",
        ),
        Chart(
            "Products classified by variant",
            "Prediction requests a second, champion and challenger.",
            (Query("rakuten:predict_requests:rate5m", "{{variant}}"),),
            "reqps",
        ),
        Chart(
            "Refusals by kind",
            "Requests and products refused (bad input, limits, rate).",
            (Query("rakuten:errors:rate5m", "{{kind}}"),),
            "reqps",
        ),
        Chart(
            "Rate limited and overloaded",
            "429 (a client over its rate) and 503 (the model's queue is full) a second.",
            (Query('sum by (status) (rakuten:requests:rate5m{status=~"429|503"})', "{{status}}"),),
            "reqps",
        ),
    ],
    "Latency": [
        Chart(
            "Prediction latency",
            "p50 and p95 of answered prediction requests.",
            (
                Query("rakuten:latency_p50_seconds:5m", "p50 {{variant}}"),
                Query("rakuten:latency_p95_seconds:5m", "p95 {{variant}}"),
            ),
            "s",
            thresholds=RED_OVER(0.5),
        ),
        Chart(
            "Products per model call",
            "Requests that wait together are predicted together: the median batch.",
            (
                Query(
                    "histogram_quantile(0.5, sum by (le) "
                    "(rate(rakuten_api_model_batch_products_bucket[5m])))",
                    "median",
                ),
            ),
        ),
        Chart(
            "Server errors",
            "Share of requests answered 5xx (alert over 1%).",
            (Query("rakuten:server_error_ratio:rate5m", "5xx"),),
            "percentunit",
            "stat",
            RED_OVER(0.01),
            6,
        ),
        Chart(
            "API up",
            "Replicas Prometheus reaches.",
            (Query('sum(up{job="api"})', "replicas"),),
            kind="stat",
            thresholds=RED_UNDER(1),
            width=6,
        ),
    ],
    "Prediction store": [
        Chart(
            "Store backlog",
            "Rows accepted and not yet in the database (memory and disk "
            "spool): grows while the database is down, drains when it is back.",
            (
                Query("sum(rakuten_store_backlog)", "backlog"),
                Query("sum(rakuten_store_spooled)", "on disk"),
            ),
            thresholds=RED_OVER(1000),
        ),
        Chart(
            "Rows written",
            "Rows a second written to the database.",
            (Query("sum by (table) (rate(rakuten_store_written_total[5m]))", "{{table}}"),),
            "rowsps",
        ),
        Chart(
            "Database reachable",
            "1 if every replica's last write worked.",
            (Query("min(rakuten_store_up)", "store"),),
            kind="stat",
            thresholds=RED_UNDER(1),
            width=6,
        ),
        Chart(
            "Rows dropped",
            "Prediction rows lost because the spool was full (never feedback).",
            (Query("sum(rakuten_store_dropped_total)", "dropped"),),
            kind="stat",
            thresholds=RED_OVER(1),
            width=6,
        ),
    ],
}

MODEL_ROWS = {
    "Served models": [
        Chart("Models served", "The bundle version each variant serves.",
              (Query("rakuten_api_model_info", "{{variant}} {{version}}"),), kind="stat",
              width=8),
        Chart("Model reloads", "Alias checks and POST /admin/reload, by outcome, in the last "
              "hour.",
              (Query("sum by (outcome) (increase(rakuten_api_model_reloads_total[1h]))",
                     "{{outcome}}"),), width=8),
        Chart("Shadow predictions", "Challenger predictions made in the champion's shadow, by "
              "outcome.",
              (Query("sum by (outcome) (rate(rakuten_api_shadow_predictions_total[5m]))",
                     "{{outcome}}"),), "reqps", width=8),
        Chart("Predicted product types", "Products a second by predicted type (a shift here "
              "is what drift's predicted_mix measures).",
              (Query("sum by (prdtypecode) (rakuten:predictions:rate5m)", "{{prdtypecode}}"),),
              "reqps", width=24),
    ],
    "Drift": [
        Chart("Drift checks fired", "Checks whose p-value is under params.yaml drift.p_value "
              "on the latest window of the champion's traffic.",
              (Query("sum(rakuten_drift_detected)", "fired"),), kind="stat",
              thresholds=RED_OVER(1), width=6),
        Chart("Window", "Served predictions in the latest drift window.",
              (Query("rakuten_drift_window_predictions", "predictions"),), kind="stat", width=6),
        Chart("Since the last check", "Seconds since the exporter last checked the store.",
              (Query("time() - rakuten_drift_checked_timestamp_seconds", "age"),), "s", "stat",
              RED_OVER(600), 6),
        Chart("Exporter", "1 if the exporter's last refresh worked.",
              (Query("min(rakuten_exporter_up)", "exporter"),), kind="stat",
              thresholds=RED_UNDER(1), width=6),
        Chart("Drift p-values", "Each check's p-value (log scale in spirit: under 0.005 fires).",
              (Query("rakuten_drift_p_value", "{{check}}"),), "none", low=0, high=1,
              thresholds=((None, "red"), (0.005, "green")), width=24),
    ],
    "Online quality (products with feedback)": [
        Chart("Accuracy by variant", "Share of products with feedback each model got right.",
              (Query("rakuten_online_accuracy", "{{variant}} {{model_version}}"),),
              "percentunit", low=0, high=1),
        Chart("Challenger minus champion", "Accuracy gain and its 95% interval (paired in "
              "shadow mode); the alert fires when the interval is all below 0.",
              (Query("rakuten_online_challenger_gain", "{{bound}}"),), "percentunit"),
        Chart("Products with feedback", "Per variant, and those the comparison rests on.",
              (Query("rakuten_online_feedback_products", "{{variant}}"),
               Query("rakuten_online_compared_products", "compared")), width=24),
    ],
}  # fmt: skip
