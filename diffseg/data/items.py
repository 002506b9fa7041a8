"""What a dataset source lists: its items (an image, its mask and field of view, its split)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Item:
    name: str
    split: str  # "train" or "test" (the held-out official split)
    image: Path | None = None
    mask: Path | None = None
    fov: Path | None = None
    index: int = 0  # used by generated sources
    spacing: tuple[float, ...] = ()  # the file's own voxel spacing (mm), where it carries one
    extra: tuple[Path, ...] = ()  # the further channel files of one image (nnU-Net's CASE_0001...)


@dataclass
class Source:
    dataset: str
    root: Path | None
    dim: int  # 2 or 3
    channels: int
    items: list[Item]
    reader: Callable[[Item], tuple[np.ndarray, np.ndarray, np.ndarray | None]]
    spacing: tuple[float, ...] = (1.0, 1.0)
    extra_fingerprint: str = ""
    notes: list[str] = field(default_factory=list)

    def read(self, item: Item):
        return self.reader(item)

    def spacing_of(self, item: Item) -> tuple[float, ...]:
        """An item's pixel or voxel spacing: its file's own, else the dataset's."""
        return tuple(item.spacing) or tuple(self.spacing)

    def names(self, split: str) -> list[str]:
        return [it.name for it in self.items if it.split == split]

    def fingerprint(self) -> str:
        """Changes whenever a source file is added, removed, replaced or touched."""
        h = hashlib.sha256(f"{self.dataset}|{self.extra_fingerprint}".encode())
        for it in self.items:
            h.update(f"{it.name}|{it.split}|{it.index}".encode())
            for path in (it.image, it.mask, it.fov, *it.extra):
                if path is not None:
                    st = path.stat()
                    h.update(f"{path.name}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def hashed_test_split(names: list[str], n_test: int, salt: str) -> set[str]:
    """A fixed held-out set, identical on every machine (no RNG library involved)."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{salt}:{n}".encode()).hexdigest())
    return set(order[:n_test])
