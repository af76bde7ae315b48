"""The artifact store: a local folder by default, S3 (or any S3 API) for ``s3://`` roots.

Artifacts hold every window's features and labels: a local store's folders are made 0700 and its
files 0600, readable by their owner only (S3 keeps its own access control).

S3 calls retry transient failures (connection errors, throttling, 5xx) with exponential backoff
(botocore's ``standard`` mode, 5 attempts); what still fails raises :class:`ArtifactStoreError`, one
line naming the artifact's URI and the cause, so a failed task's log says which store was down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from training.errors import DriftloopError
from training.private_files import copy_private, private_dirs, private_home
from training.settings import Settings

__all__ = [
    "ArtifactStore",
    "ArtifactStoreError",
    "LocalStore",
    "S3Store",
    "join_uri",
    "open_root",
    "open_store",
    "store_of",
    "under_root",
]


class ArtifactStoreError(DriftloopError):
    """The artifact store could not be read or written (after the client's own retries)."""


class ArtifactStore(Protocol):
    root: str

    def put(self, local: Path, key: str) -> str:
        """Copy a local file under ``key``; return its URI."""
        ...

    def fetch(self, uri: str, local: Path) -> Path:
        """Copy the artifact at ``uri`` to ``local``; return ``local``."""
        ...

    def uri(self, key: str) -> str:
        """The URI ``put`` gives the artifact under ``key``."""
        ...

    def list_keys(self, prefix: str = "") -> list[str]:
        """The keys of every artifact under ``prefix`` (a folder of keys), sorted."""
        ...

    def exists(self, uri: str) -> bool:
        """Whether an artifact is stored at ``uri``."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the artifact at ``uri`` (nothing happens when there is none)."""
        ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self._root = root

    def put(self, local: Path, key: str) -> str:
        target = self._root / key
        private_dirs(target.parent)
        if local.resolve() != target.resolve():
            copy_private(local, target)
        return str(target)

    def fetch(self, uri: str, local: Path) -> Path:
        source = Path(uri)
        if not source.exists():
            raise FileNotFoundError(f"artifact {uri} does not exist")
        private_dirs(local.parent)
        return copy_private(source, local)

    def uri(self, key: str) -> str:
        return str(self._root / key)

    def list_keys(self, prefix: str = "") -> list[str]:
        folder = self._root / prefix
        if not folder.is_dir():
            return []
        return sorted(
            path.relative_to(self._root).as_posix() for path in folder.rglob("*") if path.is_file()
        )

    def exists(self, uri: str) -> bool:
        return Path(uri).is_file()

    def delete(self, uri: str) -> None:
        path = Path(uri)
        path.unlink(missing_ok=True)
        # Folders emptied by the deletion go too, up to (not including) the root.
        for folder in path.parents:
            if folder == self._root or not folder.is_relative_to(self._root):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                break


class S3Store:
    def __init__(self, root: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        parts = urlsplit(root)
        if not parts.netloc:
            raise ValueError(
                f"artifacts URI {root!r} names no bucket (expected s3://bucket/prefix)"
            )
        self.root = root.rstrip("/")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=120,
            ),
        )
        self._endpoint = f" at {endpoint_url}" if endpoint_url else ""

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _failed(self, verb: str, uri: str, exc: Exception) -> ArtifactStoreError:
        cause = " ".join(str(exc).split()) or type(exc).__name__
        return ArtifactStoreError(f"artifact store{self._endpoint}: cannot {verb} {uri}: {cause}")

    def put(self, local: Path, key: str) -> str:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        uri = f"s3://{self.bucket}/{self._key(key)}"
        try:
            self._client.upload_file(str(local), self.bucket, self._key(key))
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._failed("write", uri, exc) from exc
        return uri

    def fetch(self, uri: str, local: Path) -> Path:
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client.download_file(parts.netloc, parts.path.lstrip("/"), str(local))
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("read", uri, exc) from exc
        return local

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def list_keys(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        # "prefix/" so that a key "backups-old/x" is not under "backups".
        sub = prefix.strip("/")
        strip = f"{self.prefix}/" if self.prefix else ""
        folder = f"{self._key(sub)}/" if sub else strip
        found: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=folder
            )
            for page in pages:
                found += [item["Key"].removeprefix(strip) for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("list", f"s3://{self.bucket}/{folder}", exc) from exc
        return sorted(found)

    def exists(self, uri: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(uri)
        try:
            self._client.head_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._failed("read", uri, exc) from exc
        except BotoCoreError as exc:
            raise self._failed("read", uri, exc) from exc
        return True

    def delete(self, uri: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(uri)
        try:
            self._client.delete_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
        except (BotoCoreError, ClientError) as exc:
            raise self._failed("delete", uri, exc) from exc


def open_store(settings: Settings) -> ArtifactStore:
    if settings.artifacts_uri is None:
        private_home(settings.home)  # the default store is a folder of the data dir
    return open_root(settings.artifacts_root, settings)


def open_root(root: str, settings: Settings) -> ArtifactStore:
    """A store rooted at ``root``: a folder, or ``s3://bucket/prefix`` (through the settings' S3
    endpoint), e.g. another place than the artifacts root to keep backups in."""
    if root.startswith("s3://"):
        return S3Store(root, endpoint_url=settings.s3_endpoint_url)
    return LocalStore(Path(root))


def join_uri(root: str, *keys: str) -> str:
    """``root`` (a folder or an ``s3://`` URI) with ``keys`` appended as path segments."""
    if root.startswith("s3://"):
        return "/".join([root.rstrip("/"), *(key.strip("/") for key in keys)])
    return str(Path(root).joinpath(*keys))


def store_of(uri: str, settings: Settings) -> tuple[ArtifactStore, str]:
    """A store holding the artifact at ``uri`` (its bucket, or its folder) and the artifact's key
    in it: to read, write or delete an artifact wherever a record says it is."""
    if uri.startswith("s3://"):
        parts = urlsplit(uri)
        return S3Store(f"s3://{parts.netloc}", settings.s3_endpoint_url), parts.path.lstrip("/")
    path = Path(uri)
    return LocalStore(path.parent), path.name


def under_root(uri: str, root: str) -> bool:
    """Whether the artifact at ``uri`` lies under the store rooted at ``root``."""
    if uri.startswith("s3://") or root.startswith("s3://"):
        return uri.startswith(root.rstrip("/") + "/")
    return Path(uri).resolve().is_relative_to(Path(root).resolve())
