"""Restore a backup made by :mod:`training.backup` into an empty store and BentoML home.

In order, so that a damaged backup changes nothing: read the manifest; check that the store (its
database) and the BentoML store are empty; fetch every part and check its size and SHA-256; only
then ``pg_restore`` the database (one transaction), import the Bentos and models, put the training
sets and Bento exports back where the registry records them (when that is in this machine's
artifact store and they are missing there), compare every table's rows with the manifest's counts,
and apply the migrations this code has and the backup's schema lacks.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from psycopg2 import sql

from training import pg_tools
from training.artifacts import ArtifactStore, join_uri, open_root, store_of, under_root
from training.backup import table_rows
from training.backup_manifest import (
    MANIFEST,
    Manifest,
    Part,
    backup_root,
    list_backups,
    read_manifest,
    sha256_of,
)
from training.errors import DriftloopError, NotFoundError
from training.postgres import database_url
from training.redact import redact_url
from training.settings import Settings
from training.store import Connection, connect, migrate

__all__ = ["Restored", "find_backup", "restore"]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Restored:
    """What a restore did."""

    backup_uri: str
    manifest: Manifest
    bentos: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    # Artifacts written back at the URI the registry records, already there, or recorded outside
    # this machine's artifact store (left in the backup).
    artifacts_put: list[str] = field(default_factory=list)
    artifacts_present: list[str] = field(default_factory=list)
    artifacts_elsewhere: list[str] = field(default_factory=list)
    migrations_applied: list[int] = field(default_factory=list)
    seconds: float = 0.0


def find_backup(settings: Settings, uri: str) -> str:
    """``uri`` when it is a backup (it holds a manifest), else the newest complete backup in the
    folder of backups it names.

    Raises:
        NotFoundError: neither.
    """
    root = backup_root(settings, uri)
    store = open_root(root, settings)
    if store.exists(store.uri(MANIFEST)):
        return root
    complete = [entry for entry in list_backups(settings, to=root) if entry.complete]
    if not complete:
        raise NotFoundError(
            f"no backup at {uri}: no {MANIFEST} there, nor in a folder under it "
            "(`driftloop backup` prints the URI of the backup it makes)"
        )
    return complete[-1].uri


def _store_rows(conn: Connection) -> dict[str, int]:
    return {t: n for t, n in table_rows(conn).items() if n and t != "schema_migrations"}


def _check_empty(url: str, force: bool) -> bool:
    """Whether the store's database holds any row (refused without ``force``)."""
    with connect(url) as conn:
        rows = _store_rows(conn)
    if rows and not force:
        held = ", ".join(f"{table} {n}" for table, n in sorted(rows.items()))
        raise DriftloopError(
            f"the store {redact_url(url)} is not empty ({held} rows): restore goes into an empty "
            "store (a new database, or a new DRIFTLOOP_HOME); --force restores over it, replacing "
            "the tables the backup holds"
        )
    return bool(rows)


def _check_bentoml_empty(force: bool) -> None:
    import bentoml

    models, bentos = bentoml.models.list(), bentoml.bentos.list()
    if (models or bentos) and not force:
        home = os.environ.get("BENTOML_HOME", "~/bentoml")
        raise DriftloopError(
            f"the BentoML store {home} is not empty ({len(bentos)} Bentos, {len(models)} models): "
            "restore goes into an empty one (set BENTOML_HOME to a new folder); --force imports "
            "beside them, keeping what is there"
        )


def _fetch_parts(
    store: ArtifactStore, backup_uri: str, manifest: Manifest, stage: Path, progress: Progress
) -> dict[str, Path]:
    """Every part fetched into ``stage`` and checked against the manifest; part path -> file."""
    local: dict[str, Path] = {}
    for part in manifest.parts:
        uri = join_uri(backup_uri, part.path)
        if not store.exists(uri):
            raise DriftloopError(
                f"the backup is incomplete: {uri} ({part.kind} {part.name}) is missing; "
                "nothing was restored"
            )
        target = stage / part.path
        target.parent.mkdir(parents=True, exist_ok=True)
        store.fetch(uri, target)
        size, digest = target.stat().st_size, sha256_of(target)
        if (size, digest) != (part.bytes, part.sha256):
            raise DriftloopError(
                f"the backup is damaged: {uri} has {size} bytes, sha256 {digest[:16]}…, the "
                f"manifest says {part.bytes} bytes, sha256 {part.sha256[:16]}…; nothing was "
                "restored"
            )
        local[part.path] = target
        progress(f"  {part.path}: {size} bytes, sha256 {digest[:16]}… as the manifest says")
    progress(f"checked {len(manifest.parts)} parts: sizes and sha256 match the manifest")
    return local


# Objects of the public schema, dropped before a restore into a store whose tables are all empty
# (the migrations of a `driftloop db start` ran there): pg_restore recreates them as backed up.
_RELATIONS = (
    "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')"
    " AND NOT c.relispartition ORDER BY c.relkind = 'S', c.relname"
)
_ROUTINES = (
    "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = 'public'"
)
_TYPES = (
    "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
    " WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')"
)
_DROP_KIND = {
    "r": "TABLE",
    "p": "TABLE",
    "f": "FOREIGN TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "S": "SEQUENCE",
}


def _drop_empty_schema(url: str) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(_RELATIONS)
        for name, kind in cur.fetchall():
            cur.execute(
                sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
                    sql.SQL(_DROP_KIND[kind]), sql.Identifier("public", name)
                )
            )
        cur.execute(_ROUTINES)
        for (signature,) in cur.fetchall():
            # regprocedure's text is the routine's quoted name and argument types, from the
            # catalog: SQL as PostgreSQL itself wrote it.
            cur.execute(sql.SQL("DROP ROUTINE IF EXISTS {} CASCADE").format(sql.SQL(signature)))
        cur.execute(_TYPES)
        for (name,) in cur.fetchall():
            cur.execute(
                sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(sql.Identifier("public", name))
            )


_ASIDE = "driftloop_replaced_by_restore"


def _set_aside(url: str) -> None:
    """Rename the store's schema out of the way and start an empty one in its place."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_ASIDE)))
        cur.execute(sql.SQL("ALTER SCHEMA public RENAME TO {}").format(sql.Identifier(_ASIDE)))
        cur.execute("CREATE SCHEMA public")


def _bring_back(url: str) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE")
        cur.execute(sql.SQL("ALTER SCHEMA {} RENAME TO public").format(sql.Identifier(_ASIDE)))


def _drop_set_aside(url: str) -> None:
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(_ASIDE)))


def _import_models(manifest: Manifest, local: dict[str, Path], result: Restored) -> None:
    import bentoml
    from bentoml.exceptions import NotFound

    for part in manifest.parts:
        if part.kind == "bento":
            try:
                bentoml.bentos.get(part.name)
                continue  # --force: what is there stays
            except NotFound:
                pass
            result.bentos.append(str(bentoml.bentos.import_bento(str(local[part.path])).tag))
        elif part.kind == "model":
            try:
                bentoml.models.get(part.name)
                continue
            except NotFound:
                pass
            result.models.append(str(bentoml.models.import_model(str(local[part.path])).tag))


def _put_back(
    settings: Settings, uri: str, file: Path, result: Restored, *, seen: set[str]
) -> None:
    """Write ``file`` at the URI a record names, if that is in this machine's artifact store
    and nothing is there."""
    if uri in seen:
        return
    seen.add(uri)
    if not under_root(uri, settings.artifacts_root):
        result.artifacts_elsewhere.append(uri)
        return
    store, key = store_of(uri, settings)
    if store.exists(uri):
        result.artifacts_present.append(uri)
        return
    store.put(file, key)
    result.artifacts_put.append(uri)


def _restore_artifacts(
    settings: Settings, url: str, manifest: Manifest, local: dict[str, Path], result: Restored
) -> None:
    seen: set[str] = set()
    for part in manifest.parts:
        if part.kind == "artifact":
            _put_back(settings, part.name, local[part.path], result, seen=seen)
    bentos = {part.name: local[part.path] for part in manifest.parts if part.kind == "bento"}
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT bento_tag, bento_uri FROM model_versions"
            " WHERE bento_tag IS NOT NULL AND bento_uri IS NOT NULL"
        )
        exports = cur.fetchall()
    for bento_tag, bento_uri in exports:
        if bento_tag in bentos:
            _put_back(settings, bento_uri, bentos[bento_tag], result, seen=seen)


def _check_rows(url: str, manifest: Manifest) -> None:
    with connect(url) as conn:
        rows = table_rows(conn)
    wrong = {
        table: (rows.get(table), n) for table, n in manifest.rows.items() if rows.get(table) != n
    }
    if wrong:
        detail = ", ".join(f"{t}: {got} rows, backed up {n}" for t, (got, n) in wrong.items())
        raise DriftloopError(f"the restored store does not match the backup: {detail}")


def _database(manifest: Manifest) -> Part:
    found = [part for part in manifest.parts if part.kind == "database"]
    if len(found) != 1:
        raise DriftloopError(f"backup {manifest.id}'s manifest lists {len(found)} database dumps")
    return found[0]


def restore(
    settings: Settings, uri: str, *, force: bool = False, progress: Progress = _quiet
) -> Restored:
    """Restore the backup at ``uri`` (or the newest one under it) into the store and the BentoML
    store, which must be empty unless ``force``.

    With ``force``, the tables the backup holds are dropped and restored over what the store holds
    (other tables stay), and Bentos and models already in the BentoML store are kept as they are.

    Raises:
        NotFoundError: no backup at ``uri``.
        DriftloopError: the store or the BentoML store is not empty (without ``force``); a part is
            missing or fails its checksum (nothing is restored); pg_restore failed (the database is
            as it was); or the restored rows differ from the backup's counts.
    """
    started = time.monotonic()
    backup_uri = find_backup(settings, uri)
    store = open_root(backup_uri, settings)
    with tempfile.TemporaryDirectory(prefix="driftloop-restore-") as tmp:
        stage = Path(tmp)
        manifest = read_manifest(store, backup_uri, stage / MANIFEST)
        dump = _database(manifest)
        progress(
            f"backup {manifest.id} from {backup_uri}: made {manifest.created_at:%Y-%m-%d %H:%M} "
            f"UTC by driftloop {manifest.driftloop_version} ({manifest.code_revision}), "
            f"{len(manifest.parts)} parts"
        )
        url = database_url(settings)
        client = pg_tools.find_client(pg_tools.server_major(url))
        holds_rows = _check_empty(url, force)
        _check_bentoml_empty(force)
        if holds_rows:
            progress(f"store {redact_url(url)} holds rows: --force restores the backup over them")
        else:
            progress(f"store {redact_url(url)} and the BentoML store are empty")
        local = _fetch_parts(store, backup_uri, manifest, stage / "parts", progress)
        result = Restored(backup_uri=backup_uri, manifest=manifest)

        if not holds_rows:
            _drop_empty_schema(url)
            pg_tools.restore(client, url, local[dump.path])
            _check_rows(url, manifest)
        else:
            # pg_restore --clean cannot replace day-partitioned tables (it drops a partition's
            # inherited key first, which PostgreSQL refuses); the store's schema moves aside
            # instead, and comes back if the restore fails, so --force never loses it to an error.
            _set_aside(url)
            try:
                pg_tools.restore(client, url, local[dump.path])
                _check_rows(url, manifest)
            except BaseException:
                _bring_back(url)
                raise
            _drop_set_aside(url)
        rows = sum(n for table, n in manifest.rows.items() if table != "schema_migrations")
        progress(f"database restored (pg_restore {client.major}): {rows} rows match the backup")

        _import_models(manifest, local, result)
        progress(f"imported {len(result.bentos)} Bentos and {len(result.models)} models")
        _restore_artifacts(settings, url, manifest, local, result)
        if result.artifacts_put:
            progress(f"put back {len(result.artifacts_put)} artifacts the registry records")
        for uri_elsewhere in result.artifacts_elsewhere:
            progress(f"  {uri_elsewhere} is outside this artifact store: left in the backup")
    with connect(url) as conn:
        result.migrations_applied.extend(migrate(conn))
    if result.migrations_applied:
        progress(f"applied migrations {result.migrations_applied} (the backup predates them)")
    return dataclasses.replace(result, seconds=round(time.monotonic() - started, 3))
