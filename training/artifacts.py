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

__all__ = ["ArtifactStore", "ArtifactStoreError", "LocalStore", "S3Store", "open_store"]


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


def open_store(settings: Settings) -> ArtifactStore:
    root = settings.artifacts_root
    if root.startswith("s3://"):
        return S3Store(root, endpoint_url=settings.s3_endpoint_url)
    if settings.artifacts_uri is None:
        private_home(settings.home)  # the default store is a folder of the data dir
    return LocalStore(Path(root))
