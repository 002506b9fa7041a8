import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from diffseg import metrics
from experiments.hd95_speed import whole_array  # the transforms over the whole array, as before the crop
from diffseg.evaluate import best_threshold


def test_dice_jaccard_hand_computed():
    pred = np.array([[1, 1, 0, 0]])
    gt = np.array([[1, 0, 0, 0]])
    assert metrics.dice(pred, gt) == pytest.approx(2 / 3)
    assert metrics.jaccard(pred, gt) == pytest.approx(1 / 2)


def test_empty_cases_are_defined():
    empty, full = np.zeros((4, 4)), np.ones((4, 4))
    assert metrics.dice(empty, empty) == 1.0 and metrics.jaccard(empty, empty) == 1.0
    assert metrics.dice(empty, full) == 0.0 and metrics.dice(full, empty) == 0.0
    assert metrics.hd95(empty, empty) == 0.0 and metrics.asd(empty, empty) == 0.0
    assert math.isnan(metrics.hd95(empty, full)) and math.isnan(metrics.asd(full, empty))


def test_surface_distances_with_spacing():
    pred = np.zeros((1, 5), bool)
    gt = np.zeros((1, 5), bool)
    pred[0, 0], gt[0, 3] = True, True
    assert metrics.hd95(pred, gt) == pytest.approx(3.0)
    assert metrics.asd(pred, gt) == pytest.approx(3.0)
    assert metrics.hd95(pred, gt, spacing=(1.0, 2.0)) == pytest.approx(6.0)


def test_surface_distance_3d_and_identical_masks():
    vol = np.zeros((6, 6, 6), bool)
    vol[1:4, 1:4, 1:4] = True
    assert metrics.hd95(vol, vol) == 0.0
    shifted = np.roll(vol, 2, axis=2)
    assert metrics.hd95(vol, shifted, spacing=(1, 1, 0.5)) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 3), st.integers(0, 2**31 - 1), st.floats(0.02, 0.6))
def test_cropped_surface_metrics_equal_whole_array_ones(ndim, seed, fill):
    """The crop to the masks' box is exact: masks touching the border, thin, scattered, anisotropic."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 14, ndim))
    pred, gt = rng.random(shape) < fill, np.zeros(shape, bool)
    lo = [int(rng.integers(0, n)) for n in shape]
    gt[tuple(slice(a, a + int(rng.integers(1, 6))) for a in lo)] = True
    if not pred.any():
        pred.flat[0] = True
    spacing = tuple(float(v) for v in rng.uniform(0.5, 2.0, ndim))
    assert metrics.surface_metrics(pred, gt, spacing) == pytest.approx(whole_array(pred, gt, spacing), abs=1e-9)


def test_pooled_versus_per_image_mean():
    m = metrics.SetMetrics(surface=True)
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True
    m.add(a, a)  # dice 1
    m.add(np.zeros((4, 4), bool), a)  # dice 0, hd95 undefined
    r = m.result()
    assert r["dice"] == pytest.approx(2 * 4 / (4 + 8))
    assert r["dice_mean"] == pytest.approx(0.5)
    assert r["jaccard"] == pytest.approx(4 / 8) and r["jaccard_mean"] == pytest.approx(0.5)
    assert r["hd95_mean"] == 0.0 and r["hd95_undefined"] == 1


def test_threshold_grid_maximises_jaccard():
    gt = np.zeros((1, 4, 4), bool)
    gt[0, :2] = True
    probs = np.where(gt, 0.7, 0.3)
    t, jac = best_threshold(probs, gt, np.ones_like(gt))
    assert 0.3 <= t < 0.7 and jac == 1.0
