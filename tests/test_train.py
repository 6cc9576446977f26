import numpy as np
import torch

from models.scenes import CLASS_NAMES
from models.train import load_matching_weights, train
from models.zoo import build_model, load_checkpoint, save_checkpoint

TINY_CLASSIFIER = {"arch": "classifier", "attn": "se", "input_size": 64, "widths": [8, 16, 32, 32]}
TINY_DETECTOR = {"arch": "detector", "input_size": 64, "widths": [8, 16, 32, 32], "fpn_channels": 16}


def test_short_classifier_run_lowers_the_loss_and_saves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "tiny.pt"
    result = train(
        "tiny", TINY_CLASSIFIER, steps=60, batch=32, train_size=64, lr=1e-2, seed=0, out=out, val_count=50
    )
    losses = result["losses"]
    # 30 passes over 64 scenes: the model fits them (1.66 → 0.82 seen); an untrained one stays near ln 6
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.3
    model, config = load_checkpoint(out)
    assert config == TINY_CLASSIFIER
    assert model(torch.rand(1, 3, 64, 64))["logits"].shape == (1, 6)


def test_short_detector_run_lowers_the_loss(tmp_path):
    result = train(
        "tiny",
        TINY_DETECTOR,
        steps=40,
        batch=8,
        train_size=64,
        lr=5e-3,
        seed=0,
        out=tmp_path / "d.pt",
        val_count=20,
    )
    losses = result["losses"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) * 0.9  # about 0.8 seen; an untrained run stays near 1
    assert 0.0 <= result["map50"] <= 1.0


def test_training_is_reproducible(tmp_path):
    kwargs = {"steps": 5, "batch": 8, "train_size": 64, "lr": 1e-2, "seed": 3, "val_count": 10}
    a = train("a", TINY_CLASSIFIER, out=tmp_path / "a.pt", **kwargs)["losses"]
    b = train("b", TINY_CLASSIFIER, out=tmp_path / "b.pt", **kwargs)["losses"]
    assert a == b


def test_init_copies_the_weights_another_architecture_shares(tmp_path):
    source = build_model(TINY_CLASSIFIER, CLASS_NAMES)
    save_checkpoint(tmp_path / "se.pt", source, TINY_CLASSIFIER)
    target = build_model({**TINY_CLASSIFIER, "attn": "eca"}, CLASS_NAMES)
    copied = load_matching_weights(target, tmp_path / "se.pt")
    assert 0 < copied < len(source.state_dict())  # the convs and head match; SE's own MLP has no place in ECA
    torch.testing.assert_close(target.backbone.stem[0].weight, source.backbone.stem[0].weight.half().float())
