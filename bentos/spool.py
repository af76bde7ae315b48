"""The on-disk spool of the prediction log: where a worker's not yet stored predictions wait.

This module holds the files and directories only; the writer that fills and drains them is
:class:`bentos.prediction_log.PredictionLog`. It makes and locks a worker's owner directory (made
under a ``.creating`` name, then renamed), names and creates segment files, cuts an interrupted
last line off a segment, sets refused data aside under ``rejected/``, adopts the directories of
dead owners (and clears the ``.creating`` leftovers of workers that died while starting), and scans
every owner's segments for :meth:`~bentos.prediction_log.PredictionLog.wait_stored`. It logs
nothing: the writer reports what happened, under its own logger.

Layout under the spool root::

    <pid>-<random>/          one per live (or dead, not yet adopted) worker, mode 0700
        lock                 flock'ed by the owner for its whole life
        <time_ns>-<seq>.copy segments of COPY text lines; the name sorts by creation and carries
                             its creation time (wall clock, nanoseconds)
    rejected/                what PostgreSQL refused or what was cut short: kept, never retried
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCK_FILE = "lock"
REJECTED_DIR = "rejected"
OWNER_NAME = re.compile(r"\d+-[0-9a-f]{8}")
# An owner directory is made under this name, locked, then renamed: no worker ever sees an owner
# directory whose lock is not yet held (and mistakes a starting worker for a dead one).
CREATING_NAME = re.compile(r"\.\d+-[0-9a-f]{8}\.creating")
SEGMENT_NAME = re.compile(r"(\d{20})-\d+\.copy")
SEGMENT_SUFFIX = ".copy"

_TAIL_SCAN_BYTES = 1 << 16
# A ".creating" directory older than this, with no lock held, is a worker that died while starting.
_STALE_CREATING_S = 60.0


@dataclass
class Orphan:
    """The spool directory of a dead worker, locked by the worker draining it."""

    directory: Path
    lock_fd: int
    segments: deque[Path] = field(default_factory=deque)


@dataclass(frozen=True)
class WholeLines:
    """What :func:`keep_whole_lines` left in a segment and what it moved aside.

    Attributes:
        size: the bytes of whole lines the segment now holds.
        cut: the bytes of an incomplete last line that were moved aside (0 when none).
        kept: where they were moved (None when none).
    """

    size: int
    cut: int = 0
    kept: Path | None = None


def create_owner_directory(root: Path) -> tuple[Path, int]:
    """Make this process's spool directory under ``root`` and lock it.

    Returns:
        The directory and the open, flock'ed descriptor of its lock file (held for the owner's
        whole life).

    Raises:
        OSError: the directory cannot be made or locked.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = f"{os.getpid()}-{secrets.token_hex(4)}"
    creating = root / f".{owner}.creating"
    creating.mkdir(mode=0o700)
    lock_fd = os.open(
        creating / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
    )
    fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    directory = root / owner
    os.rename(creating, directory)
    return directory, lock_fd


def remove_owner_directory(directory: Path) -> None:
    """Remove an owner directory whose records are all stored, with the files left in it.

    Raises:
        OSError: something could not be removed.
    """
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


def open_segment(directory: Path, seq: int) -> tuple[int, Path]:
    """Create a new segment in ``directory``, named by the wall clock now and ``seq``.

    Returns:
        A descriptor open for appending and the segment's path.
    """
    path = directory / f"{time.time_ns():020d}-{seq:06d}{SEGMENT_SUFFIX}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
    return os.open(path, flags, 0o600), path


def rejected_name(segment: Path) -> str:
    """The name under ``rejected/`` of what is set aside from ``segment`` (owner and segment)."""
    return f"{segment.parent.name}-{segment.name}"


def set_aside(root: Path, name: str, data: bytes) -> Path:
    """Append ``data`` to ``rejected/<name>`` under ``root``, synced; return its path."""
    folder = root / REJECTED_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / name
    # Appending: a replay after a crash may set the same lines aside again, which is harmless;
    # overwriting could lose some. Synced, since the source is deleted or cut next.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def keep_whole_lines(root: Path, source: IO[bytes], path: Path) -> WholeLines:
    """Cut an incomplete last line (an interrupted write) off the segment ``source`` at ``path``.

    The cut bytes are set aside under ``rejected/`` before the segment is truncated.
    """
    size = source.seek(0, os.SEEK_END)
    if not size:
        return WholeLines(0)
    source.seek(size - 1)
    if source.read(1) == b"\n":
        return WholeLines(size)
    cut = 0
    end = size
    while end > 0:
        start = max(0, end - _TAIL_SCAN_BYTES)
        source.seek(start)
        found = source.read(end - start).rfind(b"\n")
        if found >= 0:
            cut = start + found + 1
            break
        end = start
    source.seek(cut)
    kept = set_aside(root, f"{rejected_name(path)}.partial", source.read())
    source.truncate(cut)
    return WholeLines(cut, size - cut, kept)


def adopt_orphans(root: Path, own: Path | None, adopted: Container[Path]) -> Iterator[Orphan]:
    """Lock the spool directories of dead workers (their lock is free), one at a time.

    Yields each as soon as it is locked, so the caller owns its lock even if a later entry fails.
    Skips ``own`` and the directories in ``adopted``; clears stale ``.creating`` directories.
    """
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return
    for entry in entries:
        path = Path(entry.path)
        if path == own or path in adopted or not entry.is_dir():
            continue
        if OWNER_NAME.fullmatch(entry.name):
            fd = _try_lock(path / LOCK_FILE)
            if fd is None:
                continue
            try:
                segments = sorted(p for p in path.iterdir() if SEGMENT_NAME.fullmatch(p.name))
            except FileNotFoundError:  # drained and removed by another worker just now
                os.close(fd)
                continue
            yield Orphan(path, fd, deque(segments))
        elif CREATING_NAME.fullmatch(entry.name):
            _remove_stale_creating(path)


def release_orphan(orphan: Orphan, *, remove: bool) -> None:
    """Unlock an adopted directory; with ``remove``, delete it first (its segments are stored).

    Raises:
        OSError: the directory could not be removed (its lock is released all the same).
    """
    try:
        if remove:
            # The lock file goes first, while it is still held: whoever opens it afterwards
            # finds no directory to drain.
            (orphan.directory / LOCK_FILE).unlink()
            orphan.directory.rmdir()
    finally:
        os.close(orphan.lock_fd)


def unstored_before(root: Path, limit_ns: int) -> bool:
    """Whether any owner under ``root`` has a non-empty segment created at or before ``limit_ns``."""
    try:
        owners = [e.path for e in os.scandir(root) if OWNER_NAME.fullmatch(e.name)]
    except FileNotFoundError:
        return False
    for owner in owners:
        try:
            entries = list(os.scandir(owner))
        except FileNotFoundError:
            continue
        for entry in entries:
            match = SEGMENT_NAME.fullmatch(entry.name)
            if match is None or int(match.group(1)) > limit_ns:
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_size:
                    return True
    return False


def _remove_stale_creating(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime < _STALE_CREATING_S:
            return
    except FileNotFoundError:
        return
    lock = path / LOCK_FILE
    fd = _try_lock(lock)
    if fd is None and lock.exists():
        return  # held: a live worker between locking and renaming (a very slow one)
    try:
        # It never got past creating: there is nothing in it but the lock file.
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        with contextlib.suppress(OSError):
            path.rmdir()
    finally:
        if fd is not None:
            os.close(fd)


def _try_lock(path: Path) -> int | None:
    """An open, exclusively locked descriptor of ``path``; None when it is missing or held."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd
