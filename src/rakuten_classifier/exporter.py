"""The monitoring exporter (`rakuten-classifier exporter`): Prometheus gauges of what the
prediction store says about the served models, refreshed every `interval` seconds.

- drift: each check of the latest window of the champion's traffic against its profile (p-value,
  statistic, fired or not), so that Prometheus alerts on drift;
- online quality: accuracy per variant and model on the products with feedback, and the
  challenger's gain over the champion with its 95% interval.

A separate process from the API: the checks read the database and take seconds, which a
scrape of the API's /metrics must not wait for; and one exporter serves every API replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from rakuten_classifier.config import logger
from rakuten_classifier.drift import DriftSettings
from rakuten_classifier.drift_report import check_store
from rakuten_classifier.online_report import compare, load_outcomes, variant_scores


class Exporter:
    def __init__(
        self,
        database_url: str,
        bundle: Callable[[], Path],
        settings: DriftSettings,
        window: int,
    ) -> None:
        self.database_url = database_url
        self.bundle = bundle  # where the champion's bundle is now (a folder, or the registry's)
        self.settings = settings
        self.window = window
        self.registry = CollectorRegistry()
        gauge = lambda name, text, labels=(): Gauge(  # noqa: E731
            name, text, labels, registry=self.registry
        )
        self.p_value = gauge("rakuten_drift_p_value", "p-value of each drift check", ["check"])
        self.statistic = gauge("rakuten_drift_statistic", "Statistic of each check", ["check"])
        self.detected = gauge("rakuten_drift_detected", "1 if the check fired", ["check"])
        self.window_rows = gauge("rakuten_drift_window_predictions", "Predictions checked")
        self.checked = gauge("rakuten_drift_checked_timestamp_seconds", "Last drift check")
        self.accuracy = gauge(
            "rakuten_online_accuracy",
            "Accuracy on the products with feedback",
            ["variant", "model_version"],
        )
        self.feedback = gauge(
            "rakuten_online_feedback_products",
            "Products with feedback a variant predicted",
            ["variant", "model_version"],
        )
        self.gain = gauge(
            "rakuten_online_challenger_gain",
            "Challenger minus champion accuracy on products with feedback, and its interval",
            ["bound"],
        )
        self.compared = gauge(
            "rakuten_online_compared_products", "Products with feedback the comparison rests on"
        )
        self.up = gauge("rakuten_exporter_up", "1 if the last refresh worked")

    def refresh(self) -> None:
        """One pass over the store; a failure (database down) keeps the last values."""
        started = time.monotonic()
        try:
            result, _, _ = check_store(
                self.bundle(), self.database_url, self.settings, self.window, keep=False
            )
            outcomes = load_outcomes(self.database_url)
        except Exception:  # the database or the registry: logged, shown by rakuten_exporter_up
            logger.exception("exporter: refresh failed")
            self.up.set(0)
            return
        for check in result.checks:
            self.p_value.labels(check.name).set(check.p_value)
            self.statistic.labels(check.name).set(check.statistic)
            self.detected.labels(check.name).set(1.0 if check.drifted else 0.0)
        self.window_rows.set(result.predictions)
        self.checked.set(time.time())
        self.accuracy.clear()
        self.feedback.clear()
        for score in variant_scores(outcomes):
            if score.with_feedback:
                self.accuracy.labels(score.variant, score.model_version).set(score.accuracy)
            self.feedback.labels(score.variant, score.model_version).set(score.with_feedback)
        comparison = compare(outcomes)
        self.gain.clear()
        if comparison is not None:
            self.gain.labels("estimate").set(comparison.difference)
            self.gain.labels("low").set(comparison.difference_low)
            self.gain.labels("high").set(comparison.difference_high)
        self.compared.set(comparison.products if comparison else 0)
        self.up.set(1)
        logger.info("exporter: %d predictions checked for drift, %d products compared, %.1f s",
                    result.predictions, comparison.products if comparison else 0,
                    time.monotonic() - started)  # fmt: skip

    def serve(self, host: str, port: int, interval: float) -> None:
        """Expose /metrics on host:port and refresh every `interval` seconds, until killed. The
        first refresh comes before the first scrape: rakuten_exporter_up means something from
        the start."""
        self.refresh()
        start_http_server(port, addr=host, registry=self.registry)
        logger.info("exporter on http://%s:%d/metrics, refreshing every %g s", host, port, interval)
        while True:
            time.sleep(interval)
            self.refresh()
