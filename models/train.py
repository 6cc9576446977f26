"""Train a demo model on generated scenes, on CPU, reproducibly.

python -m models.train cbam_classifier            # one of the demo configs in models/zoo.py
python -m models.train harnet_detector --steps 3000 --out /tmp/det.pt
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.evaluate import evaluate, to_tensor
from models.scenes import CLASS_NAMES, Scene, generate
from models.zoo import DEMO_MODELS, build_model, demo_checkpoint, read_checkpoint, save_checkpoint

TRAIN_SEED = 1  # validation and evaluation use other seeds (see models/evaluate.py)
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
) -> dict:
    """Train, validating five times on ``val_count`` scenes; returns the per-step losses and last metrics."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    detector = config["arch"] == "detector"
    kind = "detection" if detector else "classification"
    size = config["input_size"]
    model = build_model(config, CLASS_NAMES)
    if init is not None:
        print(f"{name}: {load_matching_weights(model, init)} tensors initialised from {init}", flush=True)
    t0 = time.time()
    scenes = generate(kind, TRAIN_SEED, train_size, size)
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
        x = to_tensor(x_np)
        if detector:
            raw, _ = model.forward_heads(x)
            targets = centernet_targets(
                boxes,
                [s.labels for s in batch_scenes],
                len(CLASS_NAMES),
                raw["heatmap"].shape[2],
                model.out_stride,
            )
            loss = detection_loss(raw, targets)
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
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument(
        "--init", type=Path, default=None, help="start from the matching weights of this checkpoint"
    )
    p.add_argument("--out", type=Path, default=None, help="checkpoint path (default models/weights/NAME.pt)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    config = DEMO_MODELS[a.model]
    detector = config["arch"] == "detector"
    steps = a.steps or (1500 if detector else 1000)
    batch = a.batch or (32 if detector else 64)
    train_size = a.train_size or (10000 if detector else 16000)
    if math.isnan(a.lr) or a.lr <= 0:
        p.error("--lr must be positive")
    if a.init is not None and not a.init.is_file():
        p.error(f"--init: no checkpoint at {a.init}")
    out = a.out or demo_checkpoint(a.model)
    train(
        a.model, config, steps, batch, train_size, a.lr, a.seed, out, init=a.init, weight_decay=a.weight_decay
    )


if __name__ == "__main__":
    main()
