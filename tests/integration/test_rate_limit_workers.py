"""Rate limits are per worker, as docs/serving.md says: with two workers a key gets up to twice its
burst, never more, and a global limit's single burst would not let the second through.

A real ``bentoml serve`` with two workers sharing one listening socket; the kernel hands each new
connection to whichever worker accepts first, so the test sends waves of concurrent requests, each
on a connection of its own, until both workers have answered (or a minute has passed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_service import EXAMPLE, keyed_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = 2
# One request a minute: a burst of one, and no refill within the test's window.
RATE_PER_MIN = 1


@pytest.fixture(scope="module")
def two_workers(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    home = tmp_path_factory.mktemp("limit-home")
    keys = [("slow", ["predict"], RATE_PER_MIN / 60)]
    with keyed_server(
        server_url,
        home,
        keys,
        BENTOML_CONFIG_OPTIONS=f"services.churn_service.workers={WORKERS}",
    ) as (_, url, tokens):
        yield url, tokens["slow"]


async def _wave(url: str, token: str, size: int) -> list[httpx.Response]:
    # No keep-alive: every request opens a connection, so each may land on either worker.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/predict", json=EXAMPLE, headers={"Authorization": f"Bearer {token}"}
                )
                for _ in range(size)
            )
        )


def test_each_worker_keeps_its_own_bucket(two_workers: tuple[str, str]) -> None:
    url, token = two_workers
    admitted = 0
    statuses: list[int] = []
    deadline = time.monotonic() + 50  # under the minute one token takes to refill
    while admitted < WORKERS and time.monotonic() < deadline:
        answers = asyncio.run(_wave(url, token, 8))
        statuses += [a.status_code for a in answers]
        admitted += sum(a.status_code == 200 for a in answers)
        refused = [a for a in answers if a.status_code == 429]
        assert all(a.headers["retry-after"] for a in refused)
        assert all(a.headers["x-ratelimit-limit"] == "1" for a in answers)
    # Once both buckets are spent, more waves add nothing: the limit is per worker, not looser.
    for _ in range(3):
        answers = asyncio.run(_wave(url, token, 8))
        statuses += [a.status_code for a in answers]
        admitted += sum(a.status_code == 200 for a in answers)
    assert set(statuses) <= {200, 429}, statuses
    assert admitted == WORKERS, f"{admitted} admitted of {len(statuses)}: {statuses}"
