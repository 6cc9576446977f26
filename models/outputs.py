"""Named model outputs: what each output is, so the exporter and the server can label it."""

from dataclasses import dataclass, replace

# kinds of output: predictions, and the kinds of attention map a model declares
PREDICTION = "prediction"
SPATIAL = "spatial"  # N×1×H×W, values in [0, 1]
CHANNEL = "channel"  # N×C, values in [0, 1]
CAM = "cam"  # N×classes×H×W class activation map, unnormalised
SELF_ATTENTION = "self_attention"  # N×1×H×W: one block's class-token attention over the patch grid
SELF_ATTENTION_HEADS = "self_attention_heads"  # N×heads×H×W: the same, one plane per head
ROLLOUT = "rollout"  # N×1×H×W: attention rollout over every block, on the patch grid


@dataclass(frozen=True)
class OutputSpec:
    name: str
    kind: str
    stride: int | None = None  # input pixels per map cell; None for outputs without a grid
    source: str = ""  # path of the module that computes it, as in ``named_modules()``


def attention_specs(prefix: str, attn_module, stride: int, source: str) -> list[OutputSpec]:
    """Specs for the maps an attention module returns, named ``{prefix}_{map}``."""
    return [
        OutputSpec(f"{prefix}_{name}", kind, None if kind == CHANNEL else stride, source)
        for name, kind in attn_module.MAP_KINDS.items()
    ]


def under(parent: str, specs: list[OutputSpec]) -> list[OutputSpec]:
    """``specs`` of a submodule, with sources seen from the module that holds it as ``parent``."""
    return [replace(spec, source=f"{parent}.{spec.source}") for spec in specs]
