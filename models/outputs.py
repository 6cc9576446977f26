"""Named model outputs: what each output is, so the exporter and the server can label it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from attnserve.maps import CAM, CHANNEL, ROLLOUT, SELF_ATTENTION, SELF_ATTENTION_HEADS, SPATIAL

if TYPE_CHECKING:
    from torch import nn

# kinds of output: predictions, and the kinds of attention map (attnserve.maps) a model declares
PREDICTION = "prediction"
__all__ = ["CAM", "CHANNEL", "PREDICTION", "ROLLOUT", "SELF_ATTENTION", "SELF_ATTENTION_HEADS", "SPATIAL"]


@dataclass(frozen=True)
class OutputSpec:
    name: str
    kind: str
    stride: int | None = None  # input pixels per map cell; None for outputs without a grid
    source: str = ""  # path of the module that computes it, as in ``named_modules()``


def attention_specs(prefix: str, attn_module: nn.Module, stride: int, source: str) -> list[OutputSpec]:
    """Specs for the maps an attention module returns, named ``{prefix}_{map}``."""
    return [
        OutputSpec(f"{prefix}_{name}", kind, None if kind == CHANNEL else stride, source)
        for name, kind in attn_module.MAP_KINDS.items()
    ]


def under(parent: str, specs: list[OutputSpec]) -> list[OutputSpec]:
    """``specs`` of a submodule, with sources seen from the module that holds it as ``parent``."""
    return [replace(spec, source=f"{parent}.{spec.source}") for spec in specs]
