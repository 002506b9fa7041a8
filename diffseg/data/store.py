"""What the 2D image cache and the 3D volume store share: a file built once under a lock into a
temporary name and renamed into place, and a dataset over it with one HDF5 handle per process."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import h5py
import torch
from filelock import FileLock
from torch.utils.data import Dataset

from ..durable import storage_error
from ..errors import StorageError


def open_cache(path: Path) -> h5py.File:
    """A cache or volume store for reading. A complete one is never written again (a rebuild goes
    to a new file renamed over it), so HDF5's own file locking is off: on NFS it fails
    spuriously, and a failed lock must never look like a corrupt cache."""
    return h5py.File(path, "r", locking=False)


def build_once(path: Path, complete: Callable[[Path], bool], build: Callable[[Path], None], what: str,
               before: Callable[[], None] | None = None) -> Path:
    """``path``, built by ``build(temporary)`` unless ``complete(path)`` already holds.

    One builder per file, also across nodes sharing the folder; the others wait on the lock, then
    find it complete. The file is written under a temporary name and renamed, so a kill never
    leaves half of one under its real name, and a rebuild never deletes the old file first: a
    process still reading it keeps it open, intact. ``before`` runs under the lock, before the
    build (a check of the free space, a progress line)."""
    if complete(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock"))):
        if complete(path):  # another process built it while we waited
            return path
        if before is not None:
            before()
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            build(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            # HDF5 reports a full disk as a bare OSError (often without errno): the free space says
            raise storage_error(exc, tmp) or (StorageError(f"cannot write the {what} {tmp}: {exc}")
                                              if shutil.disk_usage(path.parent).free < 2**20 else exc) from exc
        finally:
            tmp.unlink(missing_ok=True)
    return path


class StoreItems(Dataset):
    """Items of an HDF5 store. The file is opened once per process (a forked loader worker opens
    its own) and closed by ``close``; an open handle is never pickled into a worker."""

    def __init__(self, path: Path, indices: list[int]):
        self.path, self.indices = Path(path), list(indices)
        self._fh, self._pid = None, None
        # what a training item's random draws (crops, flips, jitter) derive from: (stream, epoch,
        # pass), set by the loop before each epoch's loader; None: the global stream (evaluation
        # draws nothing)
        self.draw: tuple | None = None

    def reseed(self, stream: str, epoch: int) -> None:
        """Item i's draws in this epoch come from (stream, epoch, pass, i) alone: the same with 0
        or 8 loader workers, on every machine, and they leave the process's own stream alone."""
        self.draw = (stream, epoch, 0)

    def next_pass(self) -> None:
        """A loader started over within an epoch (a small labeled set) draws afresh."""
        if self.draw is not None:
            self.draw = (*self.draw[:2], self.draw[2] + 1)

    @contextlib.contextmanager
    def drawing(self, i: int):
        """The block's torch draws are item ``i``'s own (see ``reseed``)."""
        if self.draw is None:
            yield
            return
        key = hashlib.sha256(f"{self.draw[0]}|{self.draw[1]}|{self.draw[2]}|{i}".encode()).digest()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(key[:8], "little") >> 1)
            yield

    def __len__(self) -> int:
        return len(self.indices)

    def _file(self) -> h5py.File:
        if self._fh is None or self._pid != os.getpid():
            self._fh, self._pid = open_cache(self.path), os.getpid()
        return self._fh

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"], state["_pid"] = None, None
        return state
