"""Build models from a plain config dict and save/load checkpoints (weights only, no pickled code)."""

from pathlib import Path

import torch
from torch import nn

from attnserve.models.classifier import AttentionClassifier
from attnserve.models.detector import HybridAttentionDetector
from attnserve.models.fcos import DenseAttentionDetector
from attnserve.models.vit import VisionTransformer

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "classifier": AttentionClassifier,
    "detector": HybridAttentionDetector,
    "fcos": DenseAttentionDetector,
    "vit": VisionTransformer,
}

# The demo models, with the configs they were trained with; their weights ship apart, in attnserve.demo.
DEMO_MODELS: dict[str, dict] = {
    "cbam_classifier": {"arch": "classifier", "attn": "cbam", "input_size": 96},
    "eca_classifier": {"arch": "classifier", "attn": "eca", "input_size": 96},
    "harnet_detector": {"arch": "detector", "input_size": 128},
    # FCOS-style raw dense heads with CBAM in the FPN; decoding and NMS are added to its graph at export
    "fcos_detector": {"arch": "fcos", "input_size": 128},
    # a hybrid ViT: a ResNet stem to stride 8 (a 12×12 token grid), then 4 blocks of 4 heads
    "vit_classifier": {
        "arch": "vit",
        "input_size": 96,
        "patch": 8,
        "grid": 12,
        "dim": 96,
        "depth": 4,
        "stem": "resnet",
    },
}


# Every architecture `attnserve export --arch` knows: the demo models, and larger ones with random
# weights for benchmarks (a production-size CBAM-ResNet-50: ResNet-50's stem and 3-4-6-3 bottlenecks).
ARCH_PRESETS: dict[str, dict] = {
    **DEMO_MODELS,
    "cbam_resnet50": {
        "arch": "classifier",
        "attn": "cbam",
        "input_size": 224,
        "widths": (256, 512, 1024, 2048),
        "depths": (3, 4, 6, 3),
        "bottleneck": True,
        "stem_width": 64,
        "stem_pool": True,
    },
}


def is_detector(config: dict) -> bool:
    return config["arch"] in ("detector", "fcos")


def build_model(config: dict, class_names: tuple[str, ...]) -> nn.Module:
    kwargs = {k: v for k, v in config.items() if k not in ("arch", "input_size")}
    try:
        cls = ARCHITECTURES[config["arch"]]
    except KeyError:
        raise ValueError(
            f"unknown architecture {config.get('arch')!r}; choose from {sorted(ARCHITECTURES)}"
        ) from None
    return cls(class_names, **kwargs)


def save_checkpoint(path: Path, model: nn.Module, config: dict, metrics: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # fp16 halves the checkpoint; these small models lose nothing measurable from it
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    payload = {
        "config": config,
        "class_names": list(model.class_names),
        "metrics": metrics or {},
        "state_dict": state,
    }
    torch.save(payload, path)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's payload, its weights back in float32 (they are stored as fp16)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["state_dict"] = {
        k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()
    }
    return payload


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model in eval mode, and the checkpoint's config (with ``input_size``)."""
    payload = read_checkpoint(path)
    model = build_model(payload["config"], tuple(payload["class_names"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["config"]
