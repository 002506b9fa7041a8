"""Seeded, machine-independent splits: held-out test, validation, labeled and unlabeled."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class Splits:
    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in asdict(self).items()}

    def save(self, path: Path) -> None:
        from .. import durable

        durable.write_text(path, json.dumps({k: list(v) for k, v in asdict(self).items()}, indent=1))

    @classmethod
    def load(cls, path: Path) -> "Splits":
        data = json.loads(Path(path).read_text())
        return cls(**{k: tuple(v) for k, v in data.items()})


def _shuffled(names, seed: int, salt: str) -> list[str]:
    # sha256 ordering is identical on every machine and library version, unlike an RNG.
    return sorted(names, key=lambda n: hashlib.sha256(f"{salt}:{seed}:{n}".encode()).hexdigest())


def make_splits(train: list[str], test: list[str], *, val_ratio: float, labeled_ratio: float,
                labeled_count: int, seed: int) -> Splits:
    """Carve validation from training, then the labeled subset (at least one image) from the rest."""
    if not train:
        raise DataError("the training split is empty")
    n_val = round(len(train) * val_ratio)
    if val_ratio > 0:
        n_val = max(1, n_val)
    if n_val >= len(train):
        raise DataError(f"data.val_ratio={val_ratio} leaves no training images out of {len(train)}")
    order = _shuffled(train, seed, "val")
    val, pool = sorted(order[:n_val]), order[n_val:]
    if labeled_count > 0:
        n_lab = labeled_count
        what = f"data.labeled_count={labeled_count}"
    else:
        n_lab = max(1, math.ceil(len(pool) * labeled_ratio - 1e-9)) if labeled_ratio > 0 else 0
        what = f"data.labeled_ratio={labeled_ratio}"
    if n_lab < 1:
        raise DataError(f"{what} leaves no labeled image (training pool of {len(pool)})")
    if n_lab > len(pool):
        raise DataError(f"{what} asks for {n_lab} labeled images but the training pool has {len(pool)}")
    order = _shuffled(pool, seed, "labeled")
    return Splits(tuple(sorted(order[:n_lab])), tuple(sorted(order[n_lab:])), tuple(val), tuple(sorted(test)))
