"""A backup as it is stored: its layout and manifest, and the backups under a root (listing,
pruning). Making one is :mod:`training.backup`, restoring one :mod:`training.restore`.

A backup is a folder ``<root>/<id>/`` (``<root>``: ``<artifacts root>/backups`` unless told
otherwise; ``<id>``: the UTC time it started, ``20261126T021500Z``)::

    database.dump                              pg_dump, custom format
    bentos/<service>/<version>.bento           each version with a Bento (its model inside)
    models/<model>/<version>.bentomodel        each version without one (a rejected challenger)
    artifacts/<model>/<version>/train.parquet  each version's training set
    manifest.json                              written last: a folder without it is no backup
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from training.artifacts import ArtifactStore, join_uri, open_root
from training.errors import DriftloopError, NotFoundError
from training.settings import Settings

__all__ = [
    "DATABASE_PART",
    "FORMAT",
    "MANIFEST",
    "BackupEntry",
    "Left",
    "Manifest",
    "Part",
    "backup_root",
    "default_root",
    "delete_backup",
    "list_backups",
    "prune_backups",
    "read_manifest",
    "sha256_of",
]

MANIFEST = "manifest.json"
FORMAT = 1
DATABASE_PART = "database.dump"


class Part(BaseModel):
    """One file of a backup."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["database", "bento", "model", "artifact"]
    # The database's name, a Bento or model tag, or an artifact's recorded URI.
    name: str
    # The model version it belongs to (None for the database).
    model_tag: str | None = None
    # Its key under the backup's folder.
    path: str
    bytes: int
    sha256: str
    # Where it was taken from: "bentoml store", a recorded export's URI, "pg_dump".
    source: str


class Left(BaseModel):
    """A registered version (or its training set) the backup does not hold, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model_tag: str
    why: str


class Manifest(BaseModel):
    """What a backup holds (``manifest.json``), written once everything else is in place."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int
    id: str
    created_at: datetime
    finished_at: datetime
    seconds: float
    driftloop_version: str
    code_revision: str
    server_version: str
    migrations: list[int]
    # Rows per table of the dumped snapshot (a partitioned table counts its partitions' rows).
    rows: dict[str, int]
    # model name -> {"tag", "version", "bento_tag"} of its champion when the snapshot was taken.
    champions: dict[str, dict[str, Any]]
    parts: list[Part]
    left_out: list[Left]

    @property
    def total_bytes(self) -> int:
        return sum(part.bytes for part in self.parts)


@dataclass(frozen=True)
class BackupEntry:
    """A backup found under a root: complete when its manifest is there."""

    id: str
    uri: str
    complete: bool


def default_root(settings: Settings) -> str:
    return join_uri(settings.artifacts_root, "backups")


def backup_root(settings: Settings, to: str | None) -> str:
    """Where backups go: ``to`` (a folder, made absolute, or an ``s3://`` URI), else the artifact
    store's ``backups/``."""
    if to is None:
        return default_root(settings)
    if to.startswith("s3://"):
        return to.rstrip("/")
    return str(Path(to).expanduser().resolve())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def delete_backup(store: ArtifactStore, backup_id: str) -> None:
    # The manifest first: a backup half deleted must no longer look complete.
    keys = store.list_keys(backup_id)
    for key in sorted(keys, key=lambda k: not k.endswith(f"/{MANIFEST}")):
        store.delete(store.uri(key))


def list_backups(settings: Settings, *, to: str | None = None) -> list[BackupEntry]:
    """The backups under a root, oldest first (incomplete ones too)."""
    root = backup_root(settings, to)
    store = open_root(root, settings)
    found: dict[str, bool] = {}
    for key in store.list_keys():
        head, _, rest = key.partition("/")
        if not rest:
            continue
        found[head] = found.get(head, False) or rest == MANIFEST
    return [BackupEntry(i, join_uri(root, i), complete) for i, complete in sorted(found.items())]


def prune_backups(settings: Settings, *, to: str | None = None, keep: int) -> list[BackupEntry]:
    """Delete all but the newest ``keep`` complete backups under a root, and any incomplete one
    older than the newest complete backup (a run that failed part-way); returns those deleted."""
    if keep < 1:
        raise ValueError(f"--keep must be 1 or more, got {keep}")
    entries = list_backups(settings, to=to)
    complete = [e for e in entries if e.complete]
    if not complete:
        return []
    newest = complete[-1].id
    gone = complete[:-keep] + [e for e in entries if not e.complete and e.id < newest]
    store = open_root(backup_root(settings, to), settings)
    for entry in gone:
        delete_backup(store, entry.id)
    return sorted(gone, key=lambda e: e.id)


def read_manifest(store: ArtifactStore, backup_uri: str, local: Path) -> Manifest:
    """The manifest of the backup at ``backup_uri``.

    Raises:
        NotFoundError: no manifest there.
        DriftloopError: it is not a driftloop backup manifest, or one of a newer format.
    """
    uri = join_uri(backup_uri, MANIFEST)
    if not store.exists(uri):
        raise NotFoundError(f"no backup at {backup_uri}: {MANIFEST} is missing")
    store.fetch(uri, local)
    try:
        raw = json.loads(local.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DriftloopError(f"{uri} is not JSON ({exc}): the backup is damaged") from None
    if isinstance(raw, dict) and isinstance(raw.get("format"), int) and raw["format"] > FORMAT:
        raise DriftloopError(
            f"{uri} is a backup of format {raw['format']}, newer than this driftloop reads "
            f"({FORMAT}): restore it with the driftloop that made it ({raw.get('driftloop_version')})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise DriftloopError(
            f"{uri} is not a driftloop backup manifest ({where}: {first['msg']})"
        ) from None
