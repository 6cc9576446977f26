"""Image classifier: attention ResNet backbone, global-average-pooled linear head, and a class
activation map (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016)
computed in the graph from the head weights.

Because the head is linear after a mean, logits = mean over H, W of the CAM + bias: the CAM is
computed once and the logits are read from it.
"""

import torch
from torch import nn

from attnserve.models.backbone import ResNetBackbone
from attnserve.models.outputs import CAM, PREDICTION, OutputSpec, under


class AttentionClassifier(nn.Module):
    def __init__(
        self,
        class_names: tuple[str, ...],
        attn: str | None = "cbam",
        widths: tuple[int, ...] = (24, 48, 96, 192),
        depths: tuple[int, ...] = (1, 1, 1, 1),
        bottleneck: bool = False,
        stem_width: int | None = None,
        stem_pool: bool = False,
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.backbone = ResNetBackbone(
            widths, depths, attn, bottleneck, stem_width=stem_width, stem_pool=stem_pool
        )
        self.head = nn.Linear(widths[-1], len(class_names))
        self.output_specs = [
            OutputSpec("logits", PREDICTION),
            OutputSpec("probabilities", PREDICTION),
            OutputSpec("cam", CAM, self.backbone.stage_strides[-1], "head"),
            *under("backbone", self.backbone.map_specs),
        ]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats, maps = self.backbone(x)
        cam = torch.einsum("nchw,kc->nkhw", feats[-1], self.head.weight)
        logits = cam.mean(dim=(2, 3)) + self.head.bias
        return {"logits": logits, "probabilities": torch.softmax(logits, dim=1), "cam": cam, **maps}
