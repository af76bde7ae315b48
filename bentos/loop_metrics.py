"""The retrain loop's state on the service's ``/metrics``: what a person must be woken for.

The served model's champion, its last successful retrain run and its last drift check are read from
the store when Prometheus scrapes, at most once per :data:`TTL_S` per worker, and appended to the
page (BentoML's ``__metrics__`` hook hands the service the page before it is sent). Served here
rather than by an exporter of its own because the service already holds the store's address and the
model's spec, is already scraped, and keeps running while Airflow may not: a stalled loop is then
seen by the one target nobody forgets to scrape. The values are the store's, so every replica
reports the same ones; aggregate with ``max by (model)``.

When the store does not answer, the last values read are kept and ``driftloop_loop_status_ok`` is 0.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING

from training.loop_status import LoopStatus, loop_status

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from training.settings import Settings

__all__ = ["TTL_S", "LoopMetrics", "render"]

log = logging.getLogger("driftloop.serve")

# Scrapes come every 15-60 s per Prometheus; the values change once a day. One read per worker
# per TTL keeps the store out of the scrape's latency most of the time.
TTL_S = 15.0


def _seconds(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def render(status: LoopStatus | None, share_threshold: float, ok: bool) -> bytes:
    """The exposition text of ``status`` (series whose value is unknown are left out)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import GaugeMetricFamily

    families: list[Metric] = []
    model = status.model if status is not None else ""

    def gauge(name: str, documentation: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        family = GaugeMetricFamily(name, documentation, labels=["model", *labels])
        family.add_metric([model, *labels.values()], value)
        families.append(family)

    families.append(
        GaugeMetricFamily(
            "driftloop_loop_status_ok",
            "1 when the last read of the retrain loop's state from the store succeeded",
            value=1 if ok else 0,
        )
    )
    if status is not None:
        gauge(
            "driftloop_champion_version",
            "Version number of the model's champion in the registry",
            status.champion_version,
        )
        if status.champion_model_version is not None:
            gauge(
                "driftloop_champion_info",
                "1 for the champion's model version (as predictions label it)",
                1,
                model_version=status.champion_model_version,
            )
        gauge(
            "driftloop_champion_promoted_timestamp_seconds",
            "When the champion was promoted (Unix time)",
            _seconds(status.champion_promoted_at),
        )
        gauge(
            "driftloop_retrain_last_success_timestamp_seconds",
            "When a retrain run last reached its end: skipped, or a challenger promoted or "
            "rejected (Unix time)",
            _seconds(status.last_success_at),
        )
        gauge(
            "driftloop_drift_checked_timestamp_seconds",
            "When drift was last checked (Unix time)",
            _seconds(status.drift_checked_at),
        )
        gauge(
            "driftloop_drift_share",
            "Share of the features found drifted by the last drift check",
            status.drift_share,
        )
        gauge(
            "driftloop_drift_share_threshold",
            "The drift share from which the model's spec calls a window drifted",
            share_threshold,
        )
        if status.drifted is not None:
            gauge(
                "driftloop_drift_detected",
                "1 when the last drift check called the window drifted",
                1 if status.drifted else 0,
            )
        if status.decision is not None:
            decision = GaugeMetricFamily(
                "driftloop_drift_decision",
                "1 for the last drift check's decision (retrain or skip), 0 for the other",
                labels=["model", "decision"],
            )
            for choice in ("retrain", "skip"):
                decision.add_metric([model, choice], 1 if status.decision == choice else 0)
            families.append(decision)

    class _Families:
        def collect(self) -> list[Metric]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())
    return generate_latest(registry)


class LoopMetrics:
    """A worker's cached view of one model's loop, rendered for ``/metrics``."""

    def __init__(
        self,
        database_url: str,
        settings: Settings,
        model: str,
        share_threshold: float,
        ttl_s: float = TTL_S,
    ) -> None:
        self.database_url = database_url
        self.ttl_s = ttl_s
        self.settings = settings
        self.model = model
        self.share_threshold = share_threshold
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._status: LoopStatus | None = None
        self._ok = False
        self._text = b""

    def text(self) -> str:
        """The loop's series, read from the store when the last read is older than ``ttl_s``."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl_s:
                self._refresh()
            return self._text.decode()

    def _refresh(self) -> None:
        import psycopg2

        from training.store import service_connection

        try:
            conn = service_connection(
                self.database_url,
                connect_timeout_s=self.settings.db_connect_timeout_s,
                statement_timeout_ms=self.settings.db_statement_timeout_ms,
                application_name="driftloop-metrics",
            )
            try:
                self._status = loop_status(conn, self.model)
            finally:
                conn.close()
            self._ok = True
        except psycopg2.Error as exc:
            self._ok = False
            log.warning(
                "retrain loop state unavailable for /metrics: %s",
                (str(exc).strip().splitlines() or [type(exc).__name__])[0],
            )
        self._read_at = time.monotonic()
        self._text = render(self._status, self.share_threshold, self._ok)
