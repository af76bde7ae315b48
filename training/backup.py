"""Back up the store and the registered models: one consistent snapshot of PostgreSQL
(``pg_dump --format=custom``), every registered version's Bento (``bentoml export``, which carries
its model) or, without a Bento, its model, and each version's training set, written to the artifact
store with a manifest of what, when, sizes and SHA-256 checksums (the layout:
:mod:`training.backup_manifest`).

The registry is read in the transaction whose snapshot ``pg_dump`` dumps, so the models backed up
are exactly the ones the dumped registry names. Restoring is :mod:`training.restore`.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal

import psycopg2.extensions
from psycopg2 import sql

from training import pg_tools
from training.artifacts import ArtifactStore, join_uri, open_root, store_of
from training.backup_manifest import (
    DATABASE_PART,
    FORMAT,
    MANIFEST,
    Left,
    Manifest,
    Part,
    backup_root,
    delete_backup,
    prune_backups,
    sha256_of,
)
from training.errors import DriftloopError, NotFoundError
from training.lineage import code_revision
from training.model_retention import RETENTION_TARGET
from training.postgres import ensure_database
from training.settings import Settings
from training.store import Connection, connect

__all__ = ["backup", "table_rows"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


@dataclass(frozen=True)
class _Version:
    model_name: str
    version: int
    tag: str
    status: str
    bento_tag: str | None
    bento_uri: str | None
    train_data_uri: str
    pruned: bool


@dataclass(frozen=True)
class _Snapshot:
    server_version: str
    migrations: list[int]
    rows: dict[str, int]
    versions: list[_Version]


_TABLES = (
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    " ORDER BY c.relname"
)
_VERSIONS = (
    "SELECT v.model_name, v.version, v.tag, v.status, v.bento_tag, v.bento_uri, v.train_data_uri,"
    " EXISTS (SELECT 1 FROM deployments d WHERE d.target = %s AND d.status = 'deleted'"
    " AND d.model_tag = v.tag)"
    " FROM model_versions v ORDER BY v.model_name, v.version"
)


def table_rows(conn: Connection) -> dict[str, int]:
    """Rows per table of the store's ``public`` schema (partitions counted in their parent)."""
    with conn.cursor() as cur:
        cur.execute(_TABLES)
        tables = [str(row[0]) for row in cur.fetchall()]
        rows = {}
        for table in tables:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            found = cur.fetchone()
            rows[table] = int(found[0]) if found else 0
    return rows


def _read_snapshot(conn: Connection) -> _Snapshot:
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version')")
        server = cur.fetchone()
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        migrations = [int(row[0]) for row in cur.fetchall()]
        cur.execute(_VERSIONS, (RETENTION_TARGET,))
        versions = [_Version(*row) for row in cur.fetchall()]
    return _Snapshot(
        server_version=str(server[0]) if server else "unknown",
        migrations=migrations,
        rows=table_rows(conn),
        versions=versions,
    )


@contextmanager
def _exported_snapshot(url: str) -> Iterator[tuple[str, _Snapshot]]:
    """A read-only repeatable-read transaction held open, its snapshot exported for pg_dump, and
    what the registry and the tables hold in it."""
    with connect(url) as conn:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            row = cur.fetchone()
        assert row is not None
        yield str(row[0]), _read_snapshot(conn)


def _version_of_package() -> str:
    try:
        return metadata.version("driftloop")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Writer:
    """Puts a backup's parts into its folder, each hashed and sized on the way."""

    def __init__(self, store: ArtifactStore, backup_id: str, stage: Path, progress: Progress):
        self.store = store
        self.id = backup_id
        self.stage = stage
        self.progress = progress
        self.parts: list[Part] = []
        self.left_out: list[Left] = []

    def put(
        self,
        local: Path,
        key: str,
        *,
        kind: Literal["database", "bento", "model", "artifact"],
        name: str,
        model_tag: str | None,
        source: str,
    ) -> Part:
        part = Part(
            kind=kind,
            name=name,
            model_tag=model_tag,
            path=key,
            bytes=local.stat().st_size,
            sha256=sha256_of(local),
            source=source,
        )
        self.store.put(local, f"{self.id}/{key}")
        local.unlink()
        self.parts.append(part)
        return part

    def leave_out(self, name: str, model_tag: str, why: str) -> None:
        self.left_out.append(Left(name=name, model_tag=model_tag, why=why))
        self.progress(f"  left out {name}: {why}")


def _bento_part(settings: Settings, writer: _Writer, version: _Version) -> bool:
    """The version's Bento from the local BentoML store, else from its recorded export."""
    import bentoml
    from bentoml.exceptions import NotFound

    assert version.bento_tag is not None
    name, _, bento_version = version.bento_tag.partition(":")
    key = f"bentos/{name}/{bento_version}.bento"
    local = writer.stage / "part.bento"
    try:
        bentoml.bentos.get(version.bento_tag)
    except NotFound:
        if version.bento_uri is None:
            return False
        store, _ = store_of(version.bento_uri, settings)
        if not store.exists(version.bento_uri):
            return False
        store.fetch(version.bento_uri, local)
        source = version.bento_uri
    else:
        bentoml.bentos.export_bento(version.bento_tag, str(local))
        source = "bentoml store"
    part = writer.put(
        local, key, kind="bento", name=version.bento_tag, model_tag=version.tag, source=source
    )
    writer.progress(f"  Bento {version.bento_tag} ({_size(part.bytes)}, from {source})")
    return True


def _model_part(writer: _Writer, version: _Version) -> bool:
    import bentoml
    from bentoml.exceptions import NotFound

    name, _, model_version = version.tag.partition(":")
    local = writer.stage / "part.bentomodel"
    try:
        bentoml.models.export_model(version.tag, str(local))
    except NotFound:
        return False
    part = writer.put(
        local,
        f"models/{name}/{model_version}.bentomodel",
        kind="model",
        name=version.tag,
        model_tag=version.tag,
        source="bentoml store",
    )
    writer.progress(f"  model {version.tag} ({_size(part.bytes)})")
    return True


def _training_set(settings: Settings, writer: _Writer, version: _Version) -> None:
    uri = version.train_data_uri
    store, _ = store_of(uri, settings)
    if not store.exists(uri):
        writer.leave_out(uri, version.tag, "the training set is not in the artifact store")
        return
    local = store.fetch(uri, writer.stage / "part.parquet")
    name, _, model_version = version.tag.partition(":")
    key = f"artifacts/{name}/{model_version}/{Path(uri).name}"
    writer.put(local, key, kind="artifact", name=uri, model_tag=version.tag, source=uri)


def _models(settings: Settings, writer: _Writer, snapshot: _Snapshot) -> None:
    for version in snapshot.versions:
        if version.pruned:
            continue  # its Bento and model were deleted by retention, on purpose
        if version.bento_tag is not None:
            found = _bento_part(settings, writer, version)
            what = f"Bento {version.bento_tag}"
        else:
            found = _model_part(writer, version)
            what = f"model {version.tag}"
        if not found:
            if version.status == "champion":
                raise NotFoundError(
                    f"the champion's {what} is not in the BentoML store (BENTOML_HOME) and no "
                    "export of it is recorded: the backup could not restore serving"
                )
            writer.leave_out(
                what,
                version.tag,
                f"{version.status}; not in the BentoML store and no export of it recorded",
            )
            continue
        _training_set(settings, writer, version)


def backup(
    settings: Settings,
    *,
    to: str | None = None,
    keep: int | None = None,
    progress: Progress = _quiet,
) -> tuple[str, Manifest]:
    """Back up the store and the registered models under ``to`` (default: the artifact store's
    ``backups/``); with ``keep``, then delete all but the newest ``keep`` backups there.

    Returns:
        The backup's URI (its folder) and its manifest.

    Raises:
        DriftloopError: the store or the artifact store failed, pg_dump failed, or the champion's
            Bento is nowhere to be found; nothing is left behind under the backup's id.
    """
    started = time.monotonic()
    created = datetime.now(UTC)
    backup_id = f"{created:%Y%m%dT%H%M%SZ}"
    root = backup_root(settings, to)
    store = open_root(root, settings)
    if store.list_keys(backup_id):
        # Another backup started in the same second: its files are not this one's to replace.
        raise DriftloopError(f"a backup {backup_id} already exists under {root}; try again")
    url = ensure_database(settings)
    client = pg_tools.find_client(pg_tools.server_major(url))
    progress(f"backup {backup_id} to {join_uri(root, backup_id)} (pg_dump {client.major})")
    try:
        with tempfile.TemporaryDirectory(prefix="driftloop-backup-") as tmp:
            writer = _Writer(store, backup_id, Path(tmp), progress)
            with _exported_snapshot(url) as (snapshot_id, snapshot):
                local = writer.stage / DATABASE_PART
                pg_tools.dump(client, url, local, snapshot=snapshot_id)
            part = writer.put(
                local,
                DATABASE_PART,
                kind="database",
                name=str(psycopg2.extensions.parse_dsn(url).get("dbname", "")),
                model_tag=None,
                source="pg_dump",
            )
            rows = ", ".join(f"{t} {n}" for t, n in snapshot.rows.items() if n)
            progress(f"database: {_size(part.bytes)} ({rows or 'no rows'})")
            progress(f"models: {len(snapshot.versions)} registered versions")
            _models(settings, writer, snapshot)
            champions = {
                v.model_name: {"tag": v.tag, "version": v.version, "bento_tag": v.bento_tag}
                for v in snapshot.versions
                if v.status == "champion"
            }
            manifest = Manifest(
                format=FORMAT,
                id=backup_id,
                created_at=created,
                finished_at=datetime.now(UTC),
                seconds=round(time.monotonic() - started, 3),
                driftloop_version=_version_of_package(),
                code_revision=code_revision(),
                server_version=snapshot.server_version,
                migrations=snapshot.migrations,
                rows=snapshot.rows,
                champions=champions,
                parts=writer.parts,
                left_out=writer.left_out,
            )
            manifest_file = writer.stage / MANIFEST
            manifest_file.write_text(manifest.model_dump_json(indent=2) + "\n")
            store.put(manifest_file, f"{backup_id}/{MANIFEST}")
    except BaseException:
        # What this run wrote goes; an error doing so must not hide the one that stopped it.
        with contextlib.suppress(Exception):
            delete_backup(store, backup_id)
        raise
    uri = join_uri(root, backup_id)
    progress(
        f"backup {backup_id} complete: {len(manifest.parts)} parts, "
        f"{_size(manifest.total_bytes)} in {manifest.seconds:.1f}s -> {uri}"
    )
    if keep is not None:
        for gone in prune_backups(settings, to=to, keep=keep):
            progress(f"deleted older backup {gone.id} ({gone.uri})")
    return uri, manifest
