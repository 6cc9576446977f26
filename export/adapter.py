"""The module that is exported: a model behind one fixed contract, whoever wrote it.

In: ``images``, N×3×H×W float32 RGB in [0, 1]. The adapter applies the user's normalisation, so
clients and the server never need to know it. Out: the task's prediction tensors under fixed names
(attnserve.manifest.PREDICTION_OUTPUTS), then the maps the model declares. A detector with raw heads
goes through a ``decoder`` (export/decode.py) and puts out candidates instead, which the exporter
turns into final detections in the graph (export/nms.py).
"""

import torch
from torch import nn

from attnserve.export.errors import ExportError
from attnserve.manifest import CLASSIFICATION, PREDICTION_OUTPUTS

INPUT_NAME = "images"
CANDIDATE_OUTPUTS = ("candidate_boxes", "candidate_scores")  # a decoder's outputs, before NMS
# The attribute the adapter keeps the model under; it prefixes every module scope in the exported graph.
MODEL_ATTR = "model"


class ExportAdapter(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        task: str,
        map_names: list[str],
        mean: list[float] | None = None,
        std: list[float] | None = None,
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.decoder = decoder
        self.map_names = list(map_names)
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def output_names(self) -> list[str]:
        predictions = CANDIDATE_OUTPUTS if self.decoder is not None else PREDICTION_OUTPUTS[self.task]
        return [*predictions, *self.map_names]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (images - self.mean) / self.std if self.normalize else images
        out = self.model(x)
        if self.decoder is not None:
            predictions = self.decoder(out)
        elif self.task == CLASSIFICATION:
            predictions = classification_outputs(out)
        else:
            predictions = detection_outputs(out)
        maps = tuple(out[name] for name in self.map_names)  # only models that return a dict declare maps
        return (*predictions, *maps)


def classification_outputs(out: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits from a tensor, a dict's "logits", or a tuple's first element; probabilities by softmax
    unless the model returns its own."""
    probabilities = None
    if isinstance(out, dict):
        logits, probabilities = out.get("logits"), out.get("probabilities")
    elif isinstance(out, (tuple, list)) and out:
        logits = out[0]
    else:
        logits = out
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ExportError(
            "the model's output does not fit classification: expected N×classes logits (a tensor, a dict "
            f"with 'logits', or a tuple starting with them), got {describe(out)}. Pass --task detection if "
            "it is a detector, or wrap the model so it returns logits."
        )
    if probabilities is None:
        probabilities = torch.softmax(logits, dim=1)
    return logits, probabilities


def detection_outputs(out: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes N×K×4 x1y1x2y2 input pixels, scores N×K, classes N×K int64) from a dict or a 3-tuple."""
    if isinstance(out, dict):
        parts = (out.get("boxes"), out.get("scores"), out.get("classes", out.get("labels")))
    elif isinstance(out, (tuple, list)) and len(out) == 3:
        parts = tuple(out)
    else:
        parts = (None, None, None)
    boxes, scores, classes = parts
    fits = (
        all(isinstance(p, torch.Tensor) for p in parts)
        and boxes.dim() == 3
        and boxes.shape[-1] == 4
        and scores.shape == boxes.shape[:2]
        and classes.shape == boxes.shape[:2]
    )
    if not fits:
        raise ExportError(
            f"the model's output does not fit detection: expected boxes N×K×4 (x1, y1, x2, y2 in input "
            f"pixels), scores N×K and classes N×K, as a dict or a (boxes, scores, classes) tuple, got "
            f"{describe(out)}. For raw heads, pass --head candidates or --head dense (docs/export.md) "
            "and the exporter adds decoding and NMS to the graph; or pass --task classification if it is a "
            "classifier."
        )
    return boxes, scores, classes.to(torch.int64)


def describe(out: object) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, dict):
        return "a dict {" + ", ".join(f"{k!r}: {describe(v)}" for k, v in out.items()) + "}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of (" + ", ".join(describe(v) for v in out) + ")"
    return f"a {type(out).__name__}"
