"""Durable, atomic file writes: what a resume depends on is either the old file or the new one,
never half of either, also after a power loss (temporary file, flush, fsync, rename, fsync of
the folder). Leftover temporaries of an interrupted write are recognisable and removed."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from pathlib import Path
from typing import Callable

from .errors import StorageError

TMP_SUFFIX = ".tmp"
# what the storage, not the program, is at fault for: reported as one line naming the path
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def storage_error(exc: OSError, path) -> StorageError | None:
    """The one-line error for a write that failed because of the storage; None otherwise."""
    if exc.errno not in STORAGE_ERRNOS:
        return None
    return StorageError(f"cannot write {exc.filename or path}: {exc.strerror or os.strerror(exc.errno)}")


@contextlib.contextmanager
def writing(path):
    """Turns a storage failure inside the block into a StorageError naming ``path``."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, path)
        if error is None:
            raise
        raise error from exc


def temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def write_with(path: str | Path, write: Callable[[object], None]) -> None:
    """``write(fh)`` into a temporary file beside ``path``, made durable, then renamed over it."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with writing(path), open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        with writing(path):
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_with(path, lambda fh: fh.write(text.encode("utf-8")))


def keep_copy(path: Path, copy: Path) -> None:
    """``copy`` becomes the current ``path`` (a hard link, no data copied, where the file system
    has them): when ``path`` is then replaced by a rename, ``copy`` still holds the old file."""
    tmp = temporary(copy)
    try:
        try:
            os.link(path, tmp)
        except OSError:
            write_with(tmp, lambda fh: fh.write(Path(path).read_bytes()))
        with writing(copy):
            os.replace(tmp, copy)
    finally:
        tmp.unlink(missing_ok=True)
    sync_folder(copy.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(*folders: Path) -> list[Path]:
    """Temporaries (``.<name>.<hex>.tmp``) left by a write that was killed before its rename."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.glob(f".*{TMP_SUFFIX}"):
            # only this module's own pattern: other writers' temporaries may be mid-rename
            if re.fullmatch(rf"\..+\.[0-9a-f]{{8}}{re.escape(TMP_SUFFIX)}", p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


class FolderLock:
    """One process owns a folder (a run, a study, a benchmark): an advisory lock on
    ``<folder>/.lock``, released by the OS when the process ends however it ends. A second
    process gets a StorageError naming the holder's pid and host. Re-entrant within a process."""

    held: dict[str, "FolderLock"] = {}

    def __init__(self, folder, what: str = "folder"):
        self.folder, self.what, self.fd = Path(folder), what, None

    def acquire(self) -> "FolderLock":
        import fcntl
        import socket

        key = str(self.folder.resolve())
        if key in FolderLock.held:
            return FolderLock.held[key]
        path = self.folder / ".lock"
        with writing(path):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StorageError(f"{self.what} {self.folder} is in use by {holder}: wait for it to end, or use "
                               f"another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        FolderLock.held[key] = self
        return self

    def release(self) -> None:
        if self.fd is not None:
            FolderLock.held.pop(str(self.folder.resolve()), None)
            os.close(self.fd)  # closing the descriptor drops the lock; the file stays (harmless)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
