"""Small on-disk datasets for layout and bad-input tests."""
from pathlib import Path

import numpy as np
from PIL import Image


def write_pair(images: Path, masks: Path, name: str, size=(20, 24), ext=".png", mask_values=(0, 255),
               mask_size=None):
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / f"{name}{ext}")
    m = np.full(mask_size or size, mask_values[0], np.uint8)
    m[: m.shape[0] // 2] = mask_values[1]
    Image.fromarray(m).save(masks / f"{name}{ext}")


def make_folder_dataset(root: Path, n=10, splits_csv=False) -> Path:
    for i in range(n):
        write_pair(root / "images", root / "masks", f"img{i}")
    if splits_csv:
        rows = ["name,split"] + [f"img{i},{'test' if i < 3 else 'train'}" for i in range(n)]
        (root / "splits.csv").write_text("\n".join(rows) + "\n")
    return root


def alive(pid: int) -> bool:
    """Whether a process with this PID exists (signal 0 checks without sending)."""
    import os

    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
