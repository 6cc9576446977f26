import numpy as np
import pytest

from attnserve.demo import metrics


def test_map_is_one_for_perfect_detections_and_drops_with_a_confident_false_positive():
    gt = [(np.array([[10, 10, 30, 30], [50, 50, 70, 90]], np.float32), np.array([0, 1]))]
    perfect = [(gt[0][0], np.array([0.9, 0.8]), np.array([0, 1]))]
    assert metrics.mean_average_precision(perfect, gt, 2)[0] == pytest.approx(1.0)
    boxes = np.concatenate([[[100, 100, 120, 120]], gt[0][0]]).astype(np.float32)
    with_fp = [(boxes, np.array([0.95, 0.9, 0.8]), np.array([0, 0, 1]))]
    m, aps = metrics.mean_average_precision(with_fp, gt, 2)
    assert aps == pytest.approx([0.5, 1.0]) and m == pytest.approx(0.75)


def test_map_counts_a_duplicate_and_a_loose_box_as_misses():
    gt = [(np.array([[0, 0, 10, 10]], np.float32), np.array([0]))]
    dets = [
        (
            np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 30, 30]], np.float32),
            np.array([0.9, 0.8, 0.7]),
            np.zeros(3, int),
        )
    ]
    assert metrics.mean_average_precision(dets, gt, 1)[0] == pytest.approx(1.0)  # recall 1 reached at rank 1
    loose = [(np.array([[0, 0, 30, 30]], np.float32), np.array([0.9]), np.zeros(1, int))]
    assert metrics.mean_average_precision(loose, gt, 1)[0] == 0.0


def test_pointing_game_tolerance_and_energy():
    boxes = np.array([[20, 20, 40, 40]], np.float32)
    assert metrics.pointing_hit((30, 30), boxes, 0)
    assert metrics.pointing_hit((45, 30), boxes, 6) and not metrics.pointing_hit((47, 30), boxes, 6)
    assert metrics.pointing_tolerance(224) == 15 and metrics.pointing_tolerance(112) == 7.5
    mask = metrics.boxes_mask(boxes, 64)
    assert mask.sum() == 400
    peaked = np.full((64, 64), 0.2)
    peaked[25:35, 25:35] = 1.0
    assert metrics.energy_in_boxes(peaked, mask) == pytest.approx(1.0)
    assert metrics.energy_in_boxes(np.full((64, 64), 0.5), mask) == pytest.approx(mask.mean())


def test_upsample_map_keeps_the_peak_where_it_was():
    m = np.zeros((4, 4))
    m[1, 2] = 1.0
    full = metrics.upsample_map(m, 64)
    x, y = metrics.map_peak(full)
    assert 32 <= x <= 48 and 16 <= y <= 32  # inside cell (row 1, col 2) at 16 px per cell
    np.testing.assert_allclose(metrics.upsample_map(m, 4), m)
