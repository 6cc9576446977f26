"""The shipped demo checkpoints load as weights only and reach their quality floors on held-out scenes of
the training style and of the shifted style (models.scenes.SHIFTED, which training never draws).

docs/models.md holds the figures on 1000 scenes per set; here 300 keep the suite fast, so each floor
sits about three standard errors (sqrt(p(1-p)/300): 0.016 at 0.92, 0.023 at 0.80) under the documented
figure; the issue's own floors (classifiers 0.85 shifted, detectors mAP@0.5 0.75) are on the
documented 1000.
"""

import pytest
import torch

from attnserve.demo import demo_checkpoint
from attnserve.demo.evaluate import evaluate
from attnserve.models.zoo import DEMO_MODELS, load_checkpoint

# (metric, held-out floor, shifted floor): docs/models.md measures top-1 0.928 / 0.866 (cbam), 0.933 /
# 0.855 (eca), 0.930 / 0.852 (vit), and mAP@0.5 0.968 / 0.897 (harnet) and 0.968 / 0.922 (fcos)
FLOORS = {
    "cbam_classifier": ("top1", 0.88, 0.80),
    "eca_classifier": ("top1", 0.88, 0.79),
    "vit_classifier": ("top1", 0.88, 0.79),
    "harnet_detector": ("map50", 0.93, 0.85),
    "fcos_detector": ("map50", 0.93, 0.87),
}
HELD_OUT_SEED = 5000  # neither the training (1), validation (2) nor documented evaluation (1000, 2000) seeds
SHIFTED_SEED = 5001
# A map that points: its pointing game beats the centre-point baseline by this much (the issue asks 0.1
# on 1000 scenes; on 300 the difference of two proportions has a standard error near 0.035, so 0.05
# leaves room for one and a half of them; the demo models' best maps beat it by 0.17 to 0.53 on both
# sets, docs/models.md).
POINTING_MARGIN = 0.05


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_demo_checkpoint_reaches_its_floors(name):
    path = demo_checkpoint(name)
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code in the file
    assert payload["config"] == DEMO_MODELS[name]
    model, config = load_checkpoint(path)
    metric, held_out_floor, shifted_floor = FLOORS[name]
    held_out = evaluate(model, config, count=300, seed=HELD_OUT_SEED)
    assert held_out[metric] >= held_out_floor, held_out
    shifted = evaluate(model, config, count=300, seed=SHIFTED_SEED, shifted=True)
    assert shifted[metric] >= shifted_floor, shifted
    for scenes in (held_out, shifted):
        best = max(m["pointing"] for m in scenes["maps"].values())
        assert best >= scenes["centre_baseline_pointing"] + POINTING_MARGIN, scenes


def test_demo_checkpoints_fit_the_size_budget():
    assert sum(demo_checkpoint(n).stat().st_size for n in DEMO_MODELS) <= 20 * 1024 * 1024
