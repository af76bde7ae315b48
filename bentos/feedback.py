"""Recording ground truth from the service: one connection per worker, one transaction per request.

The HTTP routes (:mod:`bentos.service`) and any other way into the service record labels through
:class:`FeedbackDesk`, so they share the same retry on a dropped connection, the same wait for a
prediction still in a spool, and the same attribution to the API key that posted the label.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg2
from starlette.responses import JSONResponse

# The module, not its names: bentoml.load(..., reload=True) remakes the schemas for another model.
from bentos import schemas
from bentos.metrics import series

if TYPE_CHECKING:
    from bentos.prediction_log import PredictionLog
    from bentos.schemas import FeedbackItemReceipt, FeedbackRequest
    from training.settings import Settings

__all__ = ["FEEDBACK_WAIT_S", "FeedbackDesk", "StoreDown", "store_down"]

log = logging.getLogger("driftloop.serve")
T = TypeVar("T")

# How long feedback for an unknown request id waits for the workers' spools to reach PostgreSQL
# (the prediction may have been answered a moment ago and still be on its way).
FEEDBACK_WAIT_S = 5.0
STORE_DOWN = "the feedback store is unavailable; nothing was recorded, retry later"


class StoreDown(Exception):
    """The feedback store did not answer; the details are in the server log, not the response."""


def store_down() -> JSONResponse:
    return JSONResponse({"error": STORE_DOWN}, status_code=503, headers={"Retry-After": "5"})


class FeedbackDesk:
    """Stores labels on one connection of its own, replaced when the server drops it."""

    def __init__(
        self, database_url: str, settings: Settings, prediction_log: PredictionLog | None
    ) -> None:
        self.database_url = database_url
        self.settings = settings
        self.prediction_log = prediction_log
        self._conn: psycopg2.extensions.connection | None = None
        self._conn_lock = threading.Lock()

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _store(self, action: Callable[[psycopg2.extensions.connection], T]) -> T:
        """Run ``action`` in one transaction on the desk's connection.

        A connection the server dropped (a restart) is replaced and the action retried once, so
        the first request after an outage does not fail on a stale connection.

        Raises:
            StoreDown: the store did not answer (or timed out); the cause is logged.
        """
        from training.store import service_connection

        with self._conn_lock:
            for attempt in (1, 2):
                fresh = self._conn is None
                try:
                    if self._conn is None:
                        self._conn = service_connection(
                            self.database_url,
                            connect_timeout_s=self.settings.db_connect_timeout_s,
                            statement_timeout_ms=self.settings.db_statement_timeout_ms,
                            application_name="driftloop-service",
                        )
                    with self._conn:
                        return action(self._conn)
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    broken = self._conn is None or self._conn.closed != 0
                    if self._conn is not None and broken:
                        self._conn = None
                    if attempt == 1 and broken and not fresh:
                        continue
                    log.warning("feedback store unavailable: %s", str(exc).strip().splitlines()[0])
                    raise StoreDown from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def record(
        self, items: list[FeedbackRequest], key_id: str | None = None
    ) -> list[FeedbackItemReceipt]:
        """Store each label in one transaction, as posted by API key ``key_id`` (None: auth is off);
        a label naming no stored prediction is reported ``not_found``, after waiting for the
        workers' spools to reach PostgreSQL once.

        Raises:
            StoreDown: the store did not answer.
        """
        from training.errors import NotFoundError
        from training.store import record_feedback

        def write(
            chosen: list[FeedbackRequest],
        ) -> Callable[[psycopg2.extensions.connection], list[FeedbackItemReceipt]]:
            def action(conn: psycopg2.extensions.connection) -> list[FeedbackItemReceipt]:
                receipts = []
                for item in chosen:
                    try:
                        status: Any = record_feedback(
                            conn,
                            item.request_id,
                            item.outcome,
                            raw_label=schemas.label_spelling(item.label),
                            key_id=key_id,
                        ).status
                    except NotFoundError:
                        status = "not_found"
                    receipts.append(
                        schemas.FeedbackItemReceipt(
                            request_id=item.request_id, label=item.outcome, status=status
                        )
                    )
                return receipts

            return action

        asked_at = time.time()
        receipts = self._store(write(items))
        missing = [i for i, r in enumerate(receipts) if r.status == "not_found"]
        # The prediction may have been answered moments ago and still be in a spool.
        if (
            missing
            and self.prediction_log is not None
            and self.prediction_log.wait_stored(asked_at, FEEDBACK_WAIT_S)
        ):
            again = self._store(write([items[i] for i in missing]))
            for index, receipt in zip(missing, again, strict=True):
                receipts[index] = receipt
        counted = series().feedback
        for receipt in receipts:
            counted.labels(receipt.status).inc()
        return receipts
