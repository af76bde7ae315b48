"""The artifact store: a local folder by default, S3 (or any S3 API) for ``s3://`` roots.

Artifacts hold every window's features and labels: a local store's folders are made 0700 and its
files 0600, readable by their owner only (S3 keeps its own access control).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from training.private_files import copy_private, private_dirs, private_home
from training.settings import Settings

__all__ = ["ArtifactStore", "LocalStore", "S3Store", "open_store"]


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

        parts = urlsplit(root)
        if not parts.netloc:
            raise ValueError(
                f"artifacts URI {root!r} names no bucket (expected s3://bucket/prefix)"
            )
        self.root = root.rstrip("/")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self._client = boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, local: Path, key: str) -> str:
        self._client.upload_file(str(local), self.bucket, self._key(key))
        return f"s3://{self.bucket}/{self._key(key)}"

    def fetch(self, uri: str, local: Path) -> Path:
        parts = urlsplit(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        self._client.download_file(parts.netloc, parts.path.lstrip("/"), str(local))
        return local


def open_store(settings: Settings) -> ArtifactStore:
    root = settings.artifacts_root
    if root.startswith("s3://"):
        return S3Store(root, endpoint_url=settings.s3_endpoint_url)
    if settings.artifacts_uri is None:
        private_home(settings.home)  # the default store is a folder of the data dir
    return LocalStore(Path(root))
