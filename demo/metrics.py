"""Detection and attention-map metrics: VOC-style mAP, pointing game and energy-in-box."""

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of A×4 and B×4 boxes (x1 y1 x2 y2)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all-point interpolation, VOC 2010+)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_average_precision(
    detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truth: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> tuple[float, list[float]]:
    """Mean AP over the classes present; ``detections[i]`` = (boxes, scores, classes) and
    ``ground_truth[i]`` = (boxes, labels) for image i."""
    aps = []
    for c in range(num_classes):
        records = []  # (score, is_true_positive)
        total = 0
        for (d_boxes, d_scores, d_classes), (g_boxes, g_labels) in zip(detections, ground_truth, strict=True):
            gt = g_boxes[g_labels == c]
            total += len(gt)
            sel = d_classes == c
            boxes, scores = d_boxes[sel], d_scores[sel]
            order = np.argsort(-scores, kind="stable")
            matched = np.zeros(len(gt), bool)
            ious = box_iou(boxes[order], gt) if len(gt) else np.zeros((len(order), 0))
            for row, i in enumerate(order):
                j = int(np.argmax(ious[row])) if len(gt) else -1
                hit = j >= 0 and ious[row, j] >= iou_threshold and not matched[j]
                if hit:
                    matched[j] = True
                records.append((float(scores[i]), hit))
        if total == 0:
            continue
        records.sort(key=lambda r: -r[0])
        tp = np.cumsum([r[1] for r in records], dtype=np.float64)
        fp = np.cumsum([not r[1] for r in records], dtype=np.float64)
        recall = tp / total if len(records) else np.zeros(0)
        precision = tp / np.maximum(tp + fp, 1e-9) if len(records) else np.zeros(0)
        aps.append(average_precision(recall, precision))
    return float(np.mean(aps)) if aps else 0.0, aps


def upsample_map(attention: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an h×w map to size×size, cell centres aligned (align_corners=False)."""
    h, w = attention.shape
    ys = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    xs = np.clip((np.arange(size) + 0.5) * w / size - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = attention[y0][:, x0] * (1 - fx) + attention[y0][:, x1] * fx
    bottom = attention[y1][:, x0] * (1 - fx) + attention[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def pointing_tolerance(size: int) -> float:
    """15 px at 224 px (Zhang et al., ECCV 2016), scaled with the image."""
    return 15.0 * size / 224.0


def pointing_hit(point: tuple[float, float], boxes: np.ndarray, tolerance: float) -> bool:
    """Whether (x, y) lies within ``tolerance`` pixels of any box."""
    x, y = point
    dx = np.maximum(np.maximum(boxes[:, 0] - x, 0), x - boxes[:, 2])
    dy = np.maximum(np.maximum(boxes[:, 1] - y, 0), y - boxes[:, 3])
    return bool(np.any(np.hypot(dx, dy) <= tolerance))


def map_peak(attention: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel centre of the arg-max of a full-resolution map."""
    y, x = np.unravel_index(int(np.argmax(attention)), attention.shape)
    return x + 0.5, y + 0.5


def boxes_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    for x1, y1, x2, y2 in boxes:
        mask[int(max(0, np.floor(y1))) : int(np.ceil(y2)), int(max(0, np.floor(x1))) : int(np.ceil(x2))] = (
            True
        )
    return mask


def energy_in_boxes(attention: np.ndarray, mask: np.ndarray) -> float:
    """Share of the min-subtracted map mass inside the boxes (Score-CAM's energy pointing game)."""
    shifted = attention - attention.min()
    total = shifted.sum()
    return float(shifted[mask].sum() / total) if total > 0 else float(mask.mean())
