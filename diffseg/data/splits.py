"""Seeded, machine-independent splits: held-out test, validation, labeled and unlabeled."""
from __future__ import annotations

import hashlib
import json
import math
import random
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
        try:
            data = json.loads(Path(path).read_text())
            fields = {"labeled", "unlabeled", "val", "test"}
            if not isinstance(data, dict) or set(data) != fields or not all(
                    isinstance(v, list) and all(isinstance(n, str) for n in v) for v in data.values()):
                raise ValueError(f"expected lists of names under {', '.join(sorted(fields))}")
        except FileNotFoundError:
            raise DataError(f"{path} not found: the run folder lost the record of its splits") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path} is damaged ({exc}); the run's splits cannot be recovered from it") from None
        return cls(**{k: tuple(v) for k, v in data.items()})


def _shuffled(names, seed: int, salt: str) -> list[str]:
    # sha256 ordering is identical on every machine and library version, unlike an RNG.
    return sorted(names, key=lambda n: hashlib.sha256(f"{salt}:{seed}:{n}".encode()).hexdigest())


def make_splits(train: list[str], test: list[str], *, val_ratio: float, labeled_ratio: float,
                labeled_count: int, seed: int, draw: str = "hashed", val_from: str = "train") -> Splits:
    """Validation, the labeled subset (at least one image) and the unlabeled rest of the
    training split. ``val_from`` "train": validation is carved first and the labeled subset
    drawn from the rest; "unlabeled": the labeled subset is drawn from the whole training split
    first, so it is the same as in a run without validation, and validation is carved from what
    is left. ``draw`` "hashed" orders names by a hash; "shuffled" as the authors' code drew its
    labeled subset: the sorted names shuffled by ``random.Random(seed)`` (REPRODUCE.md: their
    ``os.listdir`` order cannot be recovered, sorted order stands in for it)."""
    if not train:
        raise DataError("the training split is empty")
    n_val = round(len(train) * val_ratio)
    if val_ratio > 0:
        n_val = max(1, n_val)
    if n_val >= len(train):
        raise DataError(f"data.val_ratio={val_ratio} leaves no training images out of {len(train)}")

    def carve(names: list[str]) -> tuple[list[str], list[str]]:
        order = _shuffled(names, seed, "val")
        return sorted(order[:n_val]), order[n_val:]

    val, pool = carve(train) if val_from == "train" else ([], list(train))
    if labeled_count > 0:
        n_lab = labeled_count
        what = f"data.labeled_count={labeled_count}"
    else:
        n_lab = max(1, math.ceil(len(pool) * labeled_ratio - 1e-9)) if labeled_ratio > 0 else 0
        what = f"data.labeled_ratio={labeled_ratio}"
    if n_lab < 1:
        raise DataError(f"{what} leaves no labeled image (training pool of {len(pool)})")
    if n_lab + (n_val if val_from == "unlabeled" else 0) > len(pool):
        raise DataError(f"{what} asks for {n_lab} labeled images but the training pool has {len(pool)}"
                        + (f" less {n_val} for validation" if val_from == "unlabeled" else ""))
    if draw == "shuffled":
        order = sorted(pool)
        random.Random(seed).shuffle(order)
    else:
        order = _shuffled(pool, seed, "labeled")
    labeled, rest = order[:n_lab], order[n_lab:]
    if val_from == "unlabeled":
        val, rest = carve(rest)
    return Splits(tuple(sorted(labeled)), tuple(sorted(rest)), tuple(val), tuple(sorted(test)))
