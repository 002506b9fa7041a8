"""Checkpoints: written atomically, read with ``weights_only=True``.

A run folder may come from someone else; ``torch.load`` of a full pickle would run any code in
it. So a checkpoint holds only tensors, numbers, strings, lists and dicts (RNG states and
normalisation statistics included), and loading refuses anything else.
"""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from . import durable
from .errors import DataError


def previous(path: Path) -> Path:
    """Where ``save(..., keep_previous=True)`` keeps the checkpoint it replaced."""
    return Path(path).with_name(Path(path).stem + ".prev" + Path(path).suffix)


def save(obj: dict, path: Path, keep_previous: bool = False) -> None:
    """torch.save durably to a temporary name, then rename: a kill never leaves half a checkpoint.
    With ``keep_previous`` the replaced file stays as ``<name>.prev.pt`` until the next save, so a
    checkpoint damaged later (a disk error, a bad copy) still has a good one behind it."""
    path = Path(path)
    if keep_previous and path.exists():
        durable.keep_copy(path, previous(path))
    durable.write_with(path, lambda fh: torch.save(obj, fh))


def load(path: Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint; a file holding anything but plain data is refused, never executed."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"checkpoint {path} holds objects other than tensors and plain data; refused "
                        f"(loading it could run code). Detail: {str(exc).splitlines()[0]}") from None
    except FileNotFoundError:
        raise
    except Exception as exc:  # a damaged file fails anywhere in the unpickler (struct.error, EOFError...)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"checkpoint {path} cannot be read ({detail}): truncated or damaged") from None


def rng_state() -> dict:
    """Every RNG the run uses, as plain data (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss": py_gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
