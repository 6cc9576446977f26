"""The shipped demo checkpoints load as weights only and reach their quality floors on held-out scenes.

docs/models.md holds the figures on 1000 scenes; here a smaller set keeps the suite fast, so the
floors sit a few points under the documented ones to allow for sampling noise.
"""

import pytest
import torch

from models.evaluate import evaluate
from models.zoo import DEMO_MODELS, demo_checkpoint, load_checkpoint

FLOORS = {
    "cbam_classifier": ("top1", 0.93),
    "eca_classifier": ("top1", 0.93),
    "harnet_detector": ("map50", 0.8),
}
HELD_OUT_SEED = 5000  # neither the training (1), validation (2) nor documented evaluation (1000) seed


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_demo_checkpoint_reaches_its_floor(name):
    path = demo_checkpoint(name)
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code in the file
    assert payload["config"] == DEMO_MODELS[name]
    model, config = load_checkpoint(path)
    metric, floor = FLOORS[name]
    result = evaluate(model, config, count=300, seed=HELD_OUT_SEED, maps=False)
    assert result[metric] >= floor, result


def test_demo_checkpoints_fit_the_size_budget():
    assert sum(demo_checkpoint(n).stat().st_size for n in DEMO_MODELS) <= 20 * 1024 * 1024
