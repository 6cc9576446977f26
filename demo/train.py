"""Train a demo model on generated scenes, on CPU, reproducibly.

python -m attnserve.demo.train cbam_classifier            # one of the demo configs in models/zoo.py
python -m attnserve.demo.train harnet_detector --steps 3000 --out /tmp/det.pt
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from attnserve.demo import demo_checkpoint
from attnserve.demo.evaluate import SETS, evaluate, to_tensor
from attnserve.demo.metrics import boxes_mask
from attnserve.models.fcos import flatten_levels
from attnserve.models.scenes import CLASS_NAMES, Scene, generate
from attnserve.models.zoo import (
    DEMO_MODELS,
    build_model,
    is_detector,
    read_checkpoint,
    save_checkpoint,
)

TRAIN_SEED = 1  # validation and evaluation use other seeds (see demo/evaluate.py)
VAL_SEED = 2


def flip_batch(
    images: np.ndarray, scenes: list[Scene], flip: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Horizontal flips (every class is mirror-invariant); returns the images and flipped boxes."""
    images = images.copy()
    images[flip] = images[flip, :, ::-1]
    width = images.shape[2]
    boxes = []
    for s, f in zip(scenes, flip, strict=True):
        b = s.boxes.copy()
        if f:
            b[:, [0, 2]] = width - s.boxes[:, [2, 0]]
        boxes.append(b)
    return images, boxes


# Heavier sensor noise and colour casts than scenes.TRAINING draws, applied on the fly (so a fixed set of
# scenes meets new ones each epoch): Gaussian-noise training is known to carry over to other noise
# (impulse noise, compression artefacts; Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
# to Common Corruptions and Perturbations", arXiv:1903.12261), which the demo classifiers miss most.
NOISE_SIGMA = 40.0  # largest σ in 0–255 levels; scenes.TRAINING draws up to 18
COLOUR_GAIN = 0.2  # per-channel gain in 1 ± this
BRIGHTNESS_SHIFT = 20.0  # in 0–255 levels


def photometric_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each N×H×W×3 uint8 image, with even odds each: Gaussian noise of σ up to NOISE_SIGMA, and a
    per-channel gain with a brightness shift."""
    out = images.astype(np.float32)
    n = len(images)
    sigma = np.where(rng.random(n) < 0.5, rng.uniform(0, NOISE_SIGMA, n), 0.0).astype(np.float32)
    out += rng.standard_normal(out.shape, dtype=np.float32) * sigma[:, None, None, None]
    cast = rng.random(n) < 0.5
    gain = np.where(cast[:, None], rng.uniform(1 - COLOUR_GAIN, 1 + COLOUR_GAIN, (n, 3)), 1.0)
    shift = np.where(cast, rng.uniform(-BRIGHTNESS_SHIFT, BRIGHTNESS_SHIFT, n), 0.0)
    out = out * gain[:, None, None, :].astype(np.float32) + shift[:, None, None, None].astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def centernet_targets(
    boxes: list[np.ndarray], labels: list[np.ndarray], num_classes: int, out_size: int, stride: int
) -> dict[str, torch.Tensor]:
    """Gaussian centre heatmaps, and size/offset targets at each object's centre cell."""
    n = len(boxes)
    heat = np.zeros((n, num_classes, out_size, out_size), np.float32)
    size = np.zeros((n, 2, out_size, out_size), np.float32)
    offset = np.zeros((n, 2, out_size, out_size), np.float32)
    mask = np.zeros((n, out_size, out_size), np.float32)
    grid = np.arange(out_size, dtype=np.float32)
    for i, (bs, ls) in enumerate(zip(boxes, labels, strict=True)):
        for (x1, y1, x2, y2), c in zip(bs / stride, ls, strict=True):
            w, h = x2 - x1, y2 - y1
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            ix, iy = min(int(cx), out_size - 1), min(int(cy), out_size - 1)
            sigma_x, sigma_y = max(0.5, w / 6), max(0.5, h / 6)  # the box spans about ±3σ
            g = np.exp(
                -((grid[None, :] - ix) ** 2) / (2 * sigma_x**2)
                - ((grid[:, None] - iy) ** 2) / (2 * sigma_y**2)
            )
            heat[i, c] = np.maximum(heat[i, c], g)
            size[i, :, iy, ix] = (w, h)
            offset[i, :, iy, ix] = (cx - ix, cy - iy)
            mask[i, iy, ix] = 1.0
    return {
        k: torch.from_numpy(v)
        for k, v in {"heat": heat, "size": size, "offset": offset, "mask": mask}.items()
    }


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of objects."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


def detection_loss(raw: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> torch.Tensor:
    m = t["mask"].unsqueeze(1)
    count = m.sum().clamp(min=1)
    size_loss = (F.l1_loss(raw["size"], t["size"], reduction="none") * m).sum() / count
    offset_loss = (F.l1_loss(raw["offset"], t["offset"], reduction="none") * m).sum() / count
    return focal_loss(raw["heatmap"], t["heat"]) + 0.1 * size_loss + offset_loss


# FCOS's assignment, scaled to 128-pixel scenes: a location is positive for the smallest box that holds
# it within 1.5 strides of the box centre, on the level whose range holds its largest side distance
FCOS_CENTER_RADIUS = 1.5
FCOS_LEVEL_RANGES = (3, 6)  # in strides of the finest level: (0, 3s], (3s, 6s], (6s, ∞) for 3 levels


def fcos_targets(
    boxes: list[np.ndarray],
    labels: list[np.ndarray],
    num_classes: int,
    grids: list[tuple[int, int]],
    strides: list[int],
) -> dict[str, torch.Tensor]:
    """Per location (levels in order, each row-major): one-hot class, ltrb distances in its level's
    strides, centerness target, and whether it is positive."""
    centres, level_stride, low, high = [], [], [], []
    bounds = [0.0, *(r * strides[0] for r in FCOS_LEVEL_RANGES), np.inf]
    for level, ((h, w), stride) in enumerate(zip(grids, strides, strict=True)):
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        centres.append(np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], 1))
        level_stride.append(np.full(h * w, stride, np.float32))
        low.append(np.full(h * w, bounds[level], np.float32))
        high.append(np.full(h * w, bounds[level + 1], np.float32))
    p, s = np.concatenate(centres), np.concatenate(level_stride)
    low, high = np.concatenate(low), np.concatenate(high)
    n, a = len(boxes), len(p)
    cls = np.zeros((n, a, num_classes), np.float32)
    reg = np.ones((n, a, 4), np.float32)
    ctr = np.zeros((n, a), np.float32)
    pos = np.zeros((n, a), bool)
    for i, (bs, ls) in enumerate(zip(boxes, labels, strict=True)):
        if not len(bs):
            continue
        x1, y1, x2, y2 = (bs[:, k][None] for k in range(4))
        px, py = p[:, :1], p[:, 1:]
        ltrb = np.stack([px - x1, py - y1, x2 - px, y2 - py], -1)  # A×M×4
        radius = FCOS_CENTER_RADIUS * s[:, None]
        near = (np.abs(px - (x1 + x2) / 2) < radius) & (np.abs(py - (y1 + y2) / 2) < radius)
        reach = ltrb.max(-1)
        fits = (ltrb.min(-1) > 0) & near & (reach > low[:, None]) & (reach <= high[:, None])
        area = np.where(fits, (x2 - x1) * (y2 - y1), np.inf)
        best = area.argmin(1)
        hit = np.isfinite(area[np.arange(a), best])
        chosen = ltrb[np.arange(a), best][hit]
        pos[i] = hit
        cls[i, np.flatnonzero(hit), ls[best[hit]]] = 1.0
        reg[i, hit] = chosen / s[hit, None]
        lr, tb = chosen[:, [0, 2]], chosen[:, [1, 3]]
        ctr[i, hit] = np.sqrt(lr.min(1) / lr.max(1) * tb.min(1) / tb.max(1))
    return {k: torch.from_numpy(v) for k, v in {"cls": cls, "reg": reg, "ctr": ctr, "pos": pos}.items()}


def fcos_loss(out: dict, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """FCOS: sigmoid focal loss on the classes, GIoU on the positives' boxes weighted by their
    centerness target, and centerness BCE, each normalised by the number of positives."""
    cls, reg, ctr = (flatten_levels(out[k]) for k in ("cls", "reg", "ctr"))
    count = t["pos"].sum().clamp(min=1)
    cls_loss = sigmoid_focal_loss(cls, t["cls"]).sum() / count
    pos = t["pos"]
    if not pos.any():
        return cls_loss + 0 * reg.sum() + 0 * ctr.sum()
    pred, target, weight = reg[pos], t["reg"][pos], t["ctr"][pos]
    area_p = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    area_t = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    lo, hi = torch.minimum(pred, target), torch.maximum(pred, target)
    inter = (lo[:, 0] + lo[:, 2]) * (lo[:, 1] + lo[:, 3])
    enclosing = (hi[:, 0] + hi[:, 2]) * (hi[:, 1] + hi[:, 3])
    union = area_p + area_t - inter
    giou = inter / union - (enclosing - union) / enclosing
    box_loss = ((1 - giou) * weight).sum() / weight.sum().clamp(min=1e-6)
    ctr_loss = F.binary_cross_entropy_with_logits(ctr[pos][:, 0], weight, reduction="sum") / count
    return cls_loss + box_loss + ctr_loss


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al., arXiv:1708.02002), γ = 2, per element."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (alpha * target + (1 - alpha) * (1 - target)) * ce * (1 - p_t) ** 2


# Weight of the attention guidance against the detection loss: with it the HAR-Net detector's spatial
# maps learned to cover the objects and its mAP rose (0.954 → 0.972 in one 1200-step stage, by
# `python -m attnserve.demo.evaluate --checkpoint ... --count 400` on both); unguided, its stride-8 and
# stride-16 maps were flat fields peaking at the corners
ATTENTION_GUIDANCE_WEIGHT = 0.5


def attention_guidance_loss(
    maps: dict[str, torch.Tensor], boxes: list[np.ndarray], size: int, strides: list[int]
) -> torch.Tensor:
    """Mask-guided spatial attention (Pang et al., "Mask-Guided Attention Network for Occluded
    Pedestrian Detection", arXiv:1910.06160): binary cross-entropy between each pyramid level's
    spatial attention and the share of each of its cells the objects' boxes cover."""
    full = torch.from_numpy(np.stack([boxes_mask(b, size) for b in boxes]).astype(np.float32))[:, None]
    losses = []
    for stride in strides:
        gate = maps[f"level{stride}_spatial"]
        target = F.avg_pool2d(full, stride) if stride > 1 else full
        losses.append(F.binary_cross_entropy(gate.clamp(1e-6, 1 - 1e-6), target))
    return torch.stack(losses).mean()


def load_matching_weights(model: torch.nn.Module, path: Path) -> int:
    """Copy every tensor of checkpoint ``path`` whose name and shape match; returns how many matched.

    Lets one model continue from another's training (a longer run, or a shared backbone)."""
    state = read_checkpoint(path)["state_dict"]
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return len(matching)


def train(
    name: str,
    config: dict,
    steps: int,
    batch: int,
    train_size: int,
    lr: float,
    seed: int,
    out: Path,
    val_count: int = 300,
    init: Path | None = None,
    weight_decay: float = 1e-4,
    resolutions: tuple[int, int] | None = None,
    data_seed: int = TRAIN_SEED,
    photometric: bool = False,
) -> dict:
    """Train, validating five times on ``val_count`` scenes; returns the per-step losses and last metrics.

    ``resolutions`` (classifiers): each batch is resized to a side drawn from this inclusive range, in
    steps of 8 (multi-scale training, as in YOLOv2), so the filters meet each relative object size at
    several sizes in pixels; validation stays at the config's input size. ``photometric`` adds
    ``photometric_batch``'s noise and colour casts to every batch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    detector = is_detector(config)
    kind = "detection" if detector else "classification"
    size = config["input_size"]
    model = build_model(config, CLASS_NAMES)
    if init is not None:
        print(f"{name}: {load_matching_weights(model, init)} tensors initialised from {init}", flush=True)
    t0 = time.time()
    scenes = generate(kind, data_seed, train_size, size)
    images = np.stack([s.image for s in scenes])
    print(f"{name}: generated {train_size} {kind} scenes in {time.time() - t0:.0f}s", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    val_every = max(1, steps // 5)
    bar = tqdm(range(1, steps + 1), desc=name, mininterval=5)
    losses = []
    metrics: dict = {}
    for step in bar:
        model.train()
        idx = rng.choice(train_size, batch, replace=False)
        batch_scenes = [scenes[i] for i in idx]
        x_np, boxes = flip_batch(images[idx], batch_scenes, rng.random(batch) < 0.5)
        if photometric:
            x_np = photometric_batch(x_np, rng)
        x = to_tensor(x_np)
        if resolutions is not None:
            side = 8 * int(rng.integers(resolutions[0] // 8, resolutions[1] // 8 + 1))
            if side != x.shape[-1]:
                x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        labels = [s.labels for s in batch_scenes]
        if config["arch"] == "fcos":
            heads = model(x)
            grids = [tuple(c.shape[2:]) for c in heads["cls"]]
            loss = fcos_loss(heads, fcos_targets(boxes, labels, len(CLASS_NAMES), grids, model.strides))
            loss = loss + ATTENTION_GUIDANCE_WEIGHT * attention_guidance_loss(
                heads, boxes, size, model.strides
            )
        elif detector:
            raw, maps = model.forward_heads(x)
            targets = centernet_targets(
                boxes, labels, len(CLASS_NAMES), raw["heatmap"].shape[2], model.out_stride
            )
            loss = detection_loss(raw, targets) + ATTENTION_GUIDANCE_WEIGHT * attention_guidance_loss(
                maps, boxes, size, model.strides
            )
        else:
            y = torch.from_numpy(np.array([s.labels[0] for s in batch_scenes]))  # one class per scene
            loss = F.cross_entropy(model(x)["logits"], y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if step % val_every == 0 or step == steps:
            metrics = evaluate(model.eval(), config, count=val_count, seed=VAL_SEED, maps=False)
            tqdm.write(f"{name} step {step}: loss {np.mean(losses[-50:]):.4f} val {metrics}")
    save_checkpoint(out, model, config, {"train_loss": losses[-1], **metrics})
    print(f"{name}: saved {out} after {time.time() - t0:.0f}s", flush=True)
    return {"losses": losses, **metrics}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(DEMO_MODELS), help="demo model config to train")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default per model)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--train-size", type=int, default=None, help="distinct generated training scenes")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's (transformers want about 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-seed",
        type=int,
        default=TRAIN_SEED,
        help=f"seed of the training scenes (default {TRAIN_SEED}); another gives a stage fresh ones",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--init", type=Path, default=None, help="start from the matching weights of this checkpoint"
    )
    p.add_argument(
        "--resolutions",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        help="classifiers: resize each batch to a side in LO..HI (multiples of 8)",
    )
    p.add_argument(
        "--photometric",
        action="store_true",
        help="add heavier noise and colour casts to each batch on the fly (see photometric_batch)",
    )
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default demo/weights/NAME.pt)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    config = DEMO_MODELS[a.model]
    detector = is_detector(config)
    steps = a.steps or (1500 if detector else 1000)
    batch = a.batch or (32 if detector else 64)
    train_size = a.train_size or (10000 if detector else 16000)
    if a.data_seed in (VAL_SEED, *(seed for seed, _ in SETS.values())):
        p.error(
            f"--data-seed {a.data_seed} is a validation or evaluation seed: training would see its scenes"
        )
    if math.isnan(a.lr) or a.lr <= 0:
        p.error("--lr must be positive")
    if a.init is not None and not a.init.is_file():
        p.error(f"--init: no checkpoint at {a.init}")
    if a.resolutions is not None and (detector or not 8 <= a.resolutions[0] <= a.resolutions[1]):
        p.error("--resolutions: classifiers only, 8 <= LO <= HI")
    out = a.out or demo_checkpoint(a.model)
    train(
        a.model,
        config,
        steps,
        batch,
        train_size,
        a.lr,
        a.seed,
        out,
        init=a.init,
        weight_decay=a.weight_decay,
        resolutions=tuple(a.resolutions) if a.resolutions else None,
        data_seed=a.data_seed,
        photometric=a.photometric,
    )


if __name__ == "__main__":
    main()
