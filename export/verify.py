"""Checks that an exported graph is valid and computes what PyTorch computes, and the figures for the
manifest. fp32 must match PyTorch within 1e-4; fp16 and int8 are compared with the fp32 graph."""

from collections.abc import Sequence

import numpy as np
import onnx
import torch

from attnserve.export.adapter import INPUT_NAME, ExportAdapter
from attnserve.export.capture import ExplicitAttention, GateRecorder
from attnserve.export.discovery import PromotedMap, cpu_session
from attnserve.export.errors import ExportError
from attnserve.export.self_attention import AttentionMap
from attnserve.manifest import CLASSIFICATION

PARITY_TOLERANCE = 1e-4
# Detections scoring below this are background; a near-tie among them may swap freely in the top K.
SCORE_FLOOR = 0.05
AGREEMENT_SCORE = 0.3  # detections kept when comparing a quantised model with fp32
BATCH = 8


EXPORTER_HINT = (
    "This is a bug in the exporter path for this model; try --exporter torchscript or torch.export."
)


def check_graph(proto: onnx.ModelProto, hint: str = EXPORTER_HINT) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported graph fails onnx.checker's full check: {exc}. {hint}") from exc


def run_onnx(
    proto: onnx.ModelProto, images: np.ndarray, names: list[str], optimized: bool = True
) -> dict[str, np.ndarray]:
    session = cpu_session(proto, optimized)
    chunks = [session.run(names, {INPUT_NAME: images[i : i + BATCH]}) for i in range(0, len(images), BATCH)]
    return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(names)}


@torch.no_grad()
def run_torch(
    adapter: ExportAdapter, images: np.ndarray, discovered: Sequence[PromotedMap | AttentionMap]
) -> dict[str, np.ndarray]:
    """The adapter's outputs from the model as written, and each discovered map computed from PyTorch's
    own gate and attention values (recorded with attention written out, as it was exported)."""
    parts: list[dict[str, np.ndarray]] = []
    for i in range(0, len(images), BATCH):
        batch = torch.from_numpy(images[i : i + BATCH])
        outputs = adapter(batch)
        part = {name: t.numpy() for name, t in zip(adapter.output_names, outputs, strict=True)}
        if discovered:
            with GateRecorder(adapter.model) as recorder, ExplicitAttention(adapter.model):
                adapter(batch)
            part.update({m.name: m.expected(recorder.records) for m in discovered})
        parts.append(part)
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def check_batch_sizes(proto: onnx.ModelProto, images: np.ndarray, names: list[str]) -> list[int]:
    session = cpu_session(proto)
    for batch in (1, 8):
        batch_images = np.resize(images, (batch, *images.shape[1:]))
        outputs = session.run(names, {INPUT_NAME: batch_images})
        wrong = [n for n, o in zip(names, outputs, strict=True) if o.shape[0] != batch]
        if wrong:
            raise ExportError(
                f"at batch size {batch} the outputs {wrong} do not have {batch} rows: the model mixes "
                "images of a batch; every output must be computed per image."
            )
    return [1, 8]


def parity(task: str, ref: dict, got: dict, input_size: tuple[int, int]) -> dict:
    """Max abs difference per output (detections matched as sets), and whether all are within tolerance."""
    figures: dict = {"tolerance": PARITY_TOLERANCE, "max_abs_diff": {}}
    for name, expected in ref.items():
        if task != CLASSIFICATION and name in ("boxes", "scores", "classes"):
            continue
        figures["max_abs_diff"][name] = float(np.abs(expected.astype(np.float64) - got[name]).max())
    if task != CLASSIFICATION:
        figures["detections"] = match_report(ref, got)
    failed = [n for n, d in figures["max_abs_diff"].items() if not d <= PARITY_TOLERANCE]
    det = figures.get("detections")
    # boxes are in input pixels: their tolerance scales with the image
    if det and (
        det["unmatched"]
        or not det["score_max_abs_diff"] <= PARITY_TOLERANCE
        or not det["box_max_abs_diff_px"] <= PARITY_TOLERANCE * max(input_size)
    ):
        failed.append("detections")
    figures["passed"] = not failed
    figures["failed"] = failed
    return figures


def match_report(ref: dict, got: dict) -> dict:
    """Each reference detection above SCORE_FLOOR (and clear of the top-K cut) must have one in ``got``
    of the same class with IoU ≥ 0.99 and the same score."""
    compared = unmatched = 0
    score_diff = box_diff = 0.0
    for i in range(len(ref["scores"])):
        scores = ref["scores"][i]
        cut = max(SCORE_FLOOR, float(scores.min()) + PARITY_TOLERANCE)
        keep = scores >= cut
        pairs, missed = _match(ref, got, i, keep, np.ones_like(got["scores"][i], bool), 0.99)
        compared += int(keep.sum())
        unmatched += missed
        for r, g in pairs:
            score_diff = max(score_diff, abs(float(ref["scores"][i][r]) - float(got["scores"][i][g])))
            box_diff = max(box_diff, float(np.abs(ref["boxes"][i][r] - got["boxes"][i][g]).max()))
    return {
        "compared": compared,
        "unmatched": unmatched,
        "score_max_abs_diff": score_diff,
        "box_max_abs_diff_px": box_diff,
        "sorted_scores_max_abs_diff": float(
            np.abs(np.sort(ref["scores"], axis=1) - np.sort(got["scores"], axis=1)).max()
        ),
    }


def agreement(task: str, ref: dict, got: dict, map_names: list[str]) -> dict:
    """How far a quantised graph's outputs agree with fp32's: top-1 agreement (classification) or the
    share of confident detections (either model's) that the other finds, same class and IoU ≥ 0.5
    (detection); and each map's Pearson correlation."""
    figures: dict = {}
    if task == CLASSIFICATION:
        figures["top1_agreement"] = float(np.mean(ref["logits"].argmax(1) == got["logits"].argmax(1)))
        figures["probabilities_max_abs_diff"] = float(
            np.abs(ref["probabilities"] - got["probabilities"]).max()
        )
    else:
        # a confident detection counts as found if the other model has it at half the threshold, so
        # a score of 0.31 against 0.29 is not a disagreement
        found = total = 0
        for i in range(len(ref["scores"])):
            for a, b in ((ref, got), (got, ref)):
                confident = a["scores"][i] >= AGREEMENT_SCORE
                pairs, _ = _match(a, b, i, confident, b["scores"][i] >= AGREEMENT_SCORE / 2, 0.5)
                found += len(pairs)
                total += int(confident.sum())
        figures["detection_agreement"] = found / total if total else 1.0
    figures["map_correlation"] = {
        name: float(np.corrcoef(ref[name].ravel(), got[name].ravel())[0, 1]) for name in map_names
    }
    return figures


def agreement_value(task: str, figures: dict) -> float:
    return figures["top1_agreement"] if task == CLASSIFICATION else figures["detection_agreement"]


def _match(
    ref: dict, got: dict, i: int, keep_ref: np.ndarray, keep_got: np.ndarray, min_iou: float
) -> tuple[list, int]:
    """Greedy matching by score: pairs (ref index, got index) of one class with IoU ≥ ``min_iou``."""
    free = set(np.flatnonzero(keep_got).tolist())
    pairs, missed = [], 0
    for r in np.flatnonzero(keep_ref)[np.argsort(-ref["scores"][i][keep_ref])]:
        candidates = [g for g in free if got["classes"][i][g] == ref["classes"][i][r]]
        ious = [_iou(ref["boxes"][i][r], got["boxes"][i][g]) for g in candidates]
        if ious and max(ious) >= min_iou:
            g = candidates[int(np.argmax(ious))]
            free.discard(g)
            pairs.append((int(r), g))
        else:
            missed += 1
    return pairs, missed


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
