"""Shared fixtures: a real PostgreSQL for the session, and a private BentoML home and data dir.

The database is the one at ``DRIFTLOOP_TEST_DATABASE_URL`` when set, else an embedded PostgreSQL
started under the session's temporary folder (the same server the CLI uses by default).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="driftloop-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    # BentoML reads its home when first imported: point it at a private store before any test does.
    os.environ.setdefault("BENTOML_HOME", str(_SESSION_ROOT / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


_LOCAL_BASE: dict[str, Any] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start making the local base image (debootstrap, about a minute of mostly downloads and
    unpacking) while the tests before the image tests run; ``local_base`` waits for it."""
    if not any(item.get_closest_marker("container") for item in session.items):
        return
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in ("buildah", "debootstrap")):
        return  # test_image.py skips (or fails under CI) with the reason

    def prepare() -> None:
        from training.release import ensure_local_base
        from training.settings import Settings

        # Errors surface again, with their message, when the image tests ask for the base.
        with contextlib.suppress(Exception):
            ensure_local_base(Settings(home=_SESSION_ROOT / "local-base"))

    thread = threading.Thread(target=prepare, name="local-base", daemon=True)
    thread.start()
    _LOCAL_BASE["thread"] = thread


@pytest.fixture(scope="session")
def local_base() -> None:
    """Wait for the base image started at collection (if any), so it is not made twice."""
    thread = _LOCAL_BASE.get("thread")
    if thread is not None:
        thread.join()


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
