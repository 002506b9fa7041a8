"""HD95 + ASD on real LA volumes: the masks' box (diffseg.metrics, one pair of distance
transforms) against the whole-array transforms the code used before, side by side, checked
equal. `python -m experiments.hd95_speed [N_VOLUMES]` (data from $DIFFSEG_DATA or ../shared/data)."""
from __future__ import annotations

import sys
import time

import numpy as np
from scipy import ndimage

from diffseg import metrics
from diffseg.data.sources import data_root


def whole_array(pred, gt, spacing):
    """Before: the transforms over the whole array, and hd95 and asd each computed both."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)
    sp = pred & ~ndimage.binary_erosion(pred, structure, border_value=0)
    sg = gt & ~ndimage.binary_erosion(gt, structure, border_value=0)
    a = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    b = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    return max(np.percentile(a, 95), np.percentile(b, 95)), np.concatenate([a, b]).mean()


def main(n: int = 5) -> None:
    import h5py

    cases = sorted(p for p in (data_root() / "la").iterdir() if (p / "mri_norm2.h5").is_file())[:n]
    spacing, new_s, old_s = (0.625, 0.625, 0.625), 0.0, 0.0
    for case in cases:
        with h5py.File(case / "mri_norm2.h5") as fh:
            gt = fh["label"][:].astype(bool)
        pred = ndimage.binary_dilation(np.roll(gt, 3, axis=0), iterations=2)  # a plausible near miss
        t0 = time.perf_counter()
        new = metrics.surface_metrics(pred, gt, spacing)
        t1 = time.perf_counter()
        old = whole_array(pred, gt, spacing)
        t2 = time.perf_counter()
        if max(abs(new[0] - old[0]), abs(new[1] - old[1])) > 1e-9:
            raise SystemExit(f"{case.name}: cropped {new} differs from whole-array {old}")
        new_s, old_s = new_s + t1 - t0, old_s + 2 * (t2 - t1)
    print(f"HD95 + ASD on {len(cases)} LA volumes, equal to 1e-9: now {new_s:.2f} s, before {old_s:.2f} s "
          f"({old_s / new_s:.1f}x)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
