import math

import numpy as np
import pytest

from diffseg import metrics
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
