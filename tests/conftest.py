"""Shared fixtures: a real PostgreSQL for the session, and a private BentoML home and data dir.

The database is the one at ``DRIFTLOOP_TEST_DATABASE_URL`` when set, else an embedded PostgreSQL
started under the session's temporary folder (the same server the CLI uses by default).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="driftloop-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    # BentoML reads its home when first imported: point it at a private store before any test does.
    os.environ.setdefault("BENTOML_HOME", str(_SESSION_ROOT / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def session_root() -> Path:
    return _SESSION_ROOT


@pytest.fixture(scope="session")
def server_url(session_root: Path) -> Iterator[str]:
    """A PostgreSQL server URL (any database on it)."""
    from training.postgres import database_url, stop_embedded
    from training.settings import Settings

    configured = os.environ.get("DRIFTLOOP_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    settings = Settings(home=session_root / "home", database_url=None)
    url = database_url(settings, "postgres")
    yield url
    stop_embedded(settings)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> str:
    """A database of its own for this test session."""
    from training.postgres import create_database, with_database

    name = f"driftloop_test_{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    return with_database(server_url, name)


@pytest.fixture
def store_url(database_url: str) -> str:
    """The session database with empty driftloop tables."""
    from training.store import connect, migrate, reset

    with connect(database_url) as conn:
        reset(conn)
        migrate(conn)
    return database_url


@pytest.fixture(scope="session")
def airflow_database_url(server_url: str) -> str:
    """Airflow's metadata database for this session (migrated by the tests that need it)."""
    from training.postgres import create_database, with_database

    name = f"airflow_test_{uuid.uuid4().hex[:8]}"
    create_database(server_url, name)
    return with_database(server_url, name)


@pytest.fixture
def env(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point driftloop's settings (as every process of a test reads them) at a clean store and a
    fresh data dir; returns the data dir."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DRIFTLOOP_HOME", str(home))
    monkeypatch.setenv("DRIFTLOOP_DATABASE_URL", store_url)
    monkeypatch.delenv("DRIFTLOOP_ARTIFACTS_URI", raising=False)
    monkeypatch.delenv("DRIFTLOOP_MODEL_SPEC", raising=False)
    return home
