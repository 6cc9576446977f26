"""Measure models on held-out generated scenes: accuracy or mAP@0.5, and how well each attention map
points at the objects (pointing game, energy-in-box) next to the centre-point and uniform-map baselines.

    python -m models.evaluate                       # the three demo models, 1000 scenes each
    python -m models.evaluate --write docs/models.md
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import metrics
from models.outputs import CAM, ROLLOUT, SELF_ATTENTION, SPATIAL
from models.scenes import generate

EVAL_SEED = 1000  # held out: training uses seed 1, validation seed 2
EVAL_COMMAND = "python -m models.evaluate --write docs/models.md"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W float in [0, 1], the models' input."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def evaluate(
    model: nn.Module, config: dict, count: int = 1000, seed: int = EVAL_SEED, maps: bool = True
) -> dict:
    """Task quality (``top1`` or ``map50``) and, with ``maps``, per-map pointing game and energy-in-box."""
    detector = config["arch"] == "detector"
    size = config["input_size"]
    scenes = generate("detection" if detector else "classification", seed, count, size)
    plane_kinds = (SPATIAL, CAM, ROLLOUT, SELF_ATTENTION)  # maps a pointing game can read
    map_specs = [s for s in model.output_specs if s.kind in plane_kinds] if maps else []
    tolerance = metrics.pointing_tolerance(size)
    hits = {s.name: [] for s in map_specs}
    energy = {s.name: [] for s in map_specs}
    centre_hits, uniform_energy, detections, correct = [], [], [], 0
    for start in range(0, count, 100):
        chunk = scenes[start : start + 100]
        out = model(to_tensor(np.stack([s.image for s in chunk])))
        out = {k: v.numpy() for k, v in out.items()}
        for i, scene in enumerate(chunk):
            if detector:
                detections.append((out["boxes"][i], out["scores"][i], out["classes"][i]))
            else:
                correct += int(out["logits"][i].argmax() == scene.labels[0])
            if not maps:
                continue
            mask = metrics.boxes_mask(scene.boxes, size)
            centre_hits.append(metrics.pointing_hit((size / 2, size / 2), scene.boxes, tolerance))
            uniform_energy.append(float(mask.mean()))
            for spec in map_specs:
                # a CAM is read at the true class, as the pointing game defines it
                raw = out[spec.name][i, scene.labels[0] if spec.kind == CAM else 0]
                full = metrics.upsample_map(raw, size)
                hits[spec.name].append(metrics.pointing_hit(metrics.map_peak(full), scene.boxes, tolerance))
                energy[spec.name].append(metrics.energy_in_boxes(full, mask))
    result: dict = {}
    if detector:
        ground_truth = [(s.boxes, s.labels) for s in scenes]
        result["map50"], _ = metrics.mean_average_precision(detections, ground_truth, len(model.class_names))
    else:
        result["top1"] = correct / count
    if maps:
        result["maps"] = {
            name: {"pointing": float(np.mean(hits[name])), "energy": float(np.mean(energy[name]))}
            for name in hits
        }
        result["centre_baseline_pointing"] = float(np.mean(centre_hits))
        result["uniform_baseline_energy"] = float(np.mean(uniform_energy))
    return result


def markdown_report(results: dict[str, dict], count: int) -> str:
    lines = [
        "# Demo models",
        "",
        f"Measured on {count} held-out generated scenes per model (seed {EVAL_SEED}; training uses seed 1)",
        "by this command, which rewrites this file:",
        "",
        f"    .venv/bin/{EVAL_COMMAND}",
        "",
        "Pointing game: a hit when the arg-max of the map, upsampled to the image, lies within",
        "15 px × (image size / 224) of a ground-truth box (CAMs are read at the true class).",
        "Energy-in-box: share of the min-subtracted map's mass inside the boxes.",
        "Baselines: the image centre as the point, and a uniform map (the boxes' area fraction).",
        "",
    ]
    for name, r in results.items():
        quality = f"top-1 accuracy **{r['top1']:.3f}**" if "top1" in r else f"mAP@0.5 **{r['map50']:.3f}**"
        lines += [
            f"## {name}",
            "",
            f"{quality}",
            "",
            "| map | pointing game | energy-in-box |",
            "|---|---|---|",
        ]
        for map_name, m in r["maps"].items():
            lines.append(f"| `{map_name}` | {m['pointing']:.3f} | {m['energy']:.3f} |")
        baselines = f"{r['centre_baseline_pointing']:.3f} | {r['uniform_baseline_energy']:.3f}"
        lines.append(f"| centre-point / uniform-map baseline | {baselines} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from models.zoo import DEMO_MODELS, demo_checkpoint, load_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", type=Path, action="append", help="checkpoint(s) to measure (default: the demos)"
    )
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--write", type=Path, help="also write the report to this markdown file")
    a = p.parse_args()
    paths = a.checkpoint or [demo_checkpoint(n) for n in DEMO_MODELS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        sys.exit(f"error: no checkpoint at {', '.join(missing)}")
    results = {}
    for path in paths:
        model, config = load_checkpoint(path)
        results[path.stem] = evaluate(model, config, a.count)
    report = markdown_report(results, a.count)
    print(report)
    if a.write:
        a.write.parent.mkdir(parents=True, exist_ok=True)
        a.write.write_text(report)


if __name__ == "__main__":
    main()
