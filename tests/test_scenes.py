import numpy as np
import pytest

from models.scenes import CLASS_NAMES, _rng, _shape_mask, classification_scene, detection_scene, generate


def test_scenes_are_deterministic_per_seed_and_index():
    a, b = detection_scene(7, 3), detection_scene(7, 3)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, detection_scene(8, 3).image)
    assert not np.array_equal(a.image, detection_scene(7, 4).image)


def test_generate_in_parallel_equals_one_by_one():
    parallel = generate("classification", 5, 70, 64, workers=2)
    for i in (0, 33, 69):
        assert np.array_equal(parallel[i].image, classification_scene(5, i, 64).image)


def test_classification_scenes_hold_one_object_of_every_class_over_many_seeds():
    scenes = generate("classification", 11, 300, 96)
    labels = np.concatenate([s.labels for s in scenes])
    assert all(
        len(s.labels) == 1 and s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8 for s in scenes
    )
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    assert counts.min() > 25  # roughly uniform over the six classes


def test_detection_scenes_have_several_objects_with_boxes_inside_the_image():
    scenes = generate("detection", 3, 100, 128)
    counts = [len(s.labels) for s in scenes]
    assert min(counts) >= 1 and max(counts) <= 6 and np.mean(counts) > 2.5
    for s in scenes:
        assert s.boxes.shape == (len(s.labels), 4)
        assert np.all(s.boxes[:, :2] >= 0) and np.all(s.boxes[:, 2:] <= 128)
        assert np.all(s.boxes[:, 2:] - s.boxes[:, :2] >= 4)


@pytest.mark.parametrize("label", range(len(CLASS_NAMES)))
def test_boxes_are_exact_bounds_of_the_drawn_object(label):
    """Each box is tight: the object's own pixels touch all four edges, none lie outside."""
    for index in range(20):
        drawn = _shape_mask(_rng(99, index), label, 96, 48.0, 48.0, 20.0)
        mask = np.asarray(drawn) > 0
        x1, y1, x2, y2 = drawn.getbbox()
        assert mask[y1:y2, x1:x2].sum() == mask.sum()
        assert mask[y1, x1:x2].any() and mask[y2 - 1, x1:x2].any()
        assert mask[y1:y2, x1].any() and mask[y1:y2, x2 - 1].any()
        assert 20 <= x2 - x1 <= 56 and 20 <= y2 - y1 <= 56  # about the drawn radius of 20 px


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown scene kind 'segmentation'"):
        generate("segmentation", 0, 1, 64)
