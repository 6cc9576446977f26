import numpy as np
import pytest

from attnserve.models.scenes import (
    APPEARANCE_GROUPS,
    CLASS_NAMES,
    SHIFTED,
    TRAINING,
    _rng,
    _scene_style,
    _shape_mask,
    classification_scene,
    detection_scene,
    generate,
    shifted_scene,
)


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


def test_classification_scenes_hold_objects_of_one_class_and_every_class_over_many_seeds():
    scenes = generate("classification", 11, 300, 96)
    assert all(s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8 for s in scenes)
    assert all(len(s.labels) >= 1 and len(set(s.labels)) == 1 for s in scenes)
    counts = [len(s.labels) for s in scenes]
    assert 0.6 < np.mean(np.array(counts) == 1) < 0.9 and max(counts) > 1  # sometimes two or three
    classes = np.bincount([s.labels[0] for s in scenes], minlength=len(CLASS_NAMES))
    assert classes.min() > 25  # roughly uniform over the six classes


def object_sides(scenes) -> np.ndarray:
    """Each object's longer box side as a share of the image side."""
    return np.concatenate([(s.boxes[:, 2:] - s.boxes[:, :2]).max(1) / s.image.shape[0] for s in scenes])


def test_objects_span_the_training_size_range():
    sides = object_sides(generate("classification", 12, 300, 96))
    # diameters 8–45 % of the side; a drawn box runs up to ~1.3× the diameter (aspect, star and square
    # corners) and outlines and JPEG make the smallest ones a pixel or two larger
    assert sides.min() < 0.12 and sides.max() > 0.45
    assert np.mean(sides < 0.2) > 0.2 and np.mean(sides > 0.35) > 0.2


def test_shifted_scenes_lie_outside_the_training_style():
    """Larger objects than any in training, and textures, JPEG qualities and effects training never draws."""
    assert not set(SHIFTED.textures) & set(TRAINING.textures)
    assert SHIFTED.classification_diameter[1] > TRAINING.classification_diameter[1]
    assert SHIFTED.jpeg_quality[1] < TRAINING.jpeg_quality[0]
    assert SHIFTED.salt_and_pepper[0] > TRAINING.salt_and_pepper[1] and SHIFTED.gamma[0] > TRAINING.gamma[1]
    assert TRAINING.shadow == 0 < SHIFTED.shadow
    shifted = generate("classification", 12, 200, 96, shifted=True)
    training = generate("classification", 12, 200, 96)
    # diameters above 45 % are a third of the shifted range; boxes stretch, so fewer exceed every box
    assert np.mean(object_sides(shifted) > object_sides(training).max()) > 0.05
    assert np.median(object_sides(shifted)) > np.median(object_sides(training)) + 0.05
    assert np.array_equal(shifted[3].image, shifted_scene("classification", 12, 3, 96).image)
    # each shifted scene takes some of the shifted appearance, never only training's
    drawn = [_scene_style(_rng(3, i), SHIFTED) for i in range(200)]
    own = [[getattr(d, g[0]) == getattr(SHIFTED, g[0]) for g in APPEARANCE_GROUPS] for d in drawn]
    assert all(any(o) for o in own) and not all(all(o) for o in own)
    assert 0.4 < np.mean([d.textures == SHIFTED.textures for d in drawn]) < 0.75
    assert all(d.classification_diameter == SHIFTED.classification_diameter for d in drawn)
    detection = generate("detection", 12, 100, 128, shifted=True)
    assert all(1 <= len(s.labels) <= 5 for s in detection)


def test_detection_scenes_have_several_objects_with_boxes_inside_the_image():
    scenes = generate("detection", 3, 100, 128)
    counts = [len(s.labels) for s in scenes]
    assert min(counts) >= 1 and max(counts) <= 6 and np.mean(counts) > 2
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
        # about the drawn radius of 20 px, stretched by an aspect of up to 1.33 (star points reach 1.15 r)
        assert 20 <= x2 - x1 <= 62 and 20 <= y2 - y1 <= 62


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown scene kind 'segmentation'"):
        generate("segmentation", 0, 1, 64)
