"""Measure models on held-out generated scenes: accuracy or mAP@0.5, and how well each attention map
points at the objects (pointing game, energy-in-box) next to the centre-point and uniform-map baselines.
Two sets: scenes in the training style (another seed), and scenes in the shifted style
(attnserve.models.scenes.SHIFTED: sizes and styles outside every training range).

    python -m attnserve.demo.evaluate                       # the demo models, 1000 scenes of each set
    python -m attnserve.demo.evaluate --write docs/models.md
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnserve.demo import metrics
from attnserve.models.outputs import CAM, ROLLOUT, SELF_ATTENTION, SPATIAL
from attnserve.models.scenes import generate
from attnserve.models.zoo import is_detector

EVAL_SEED = 1000  # held out: training uses seed 1, validation seed 2
SHIFTED_SEED = 2000
SETS = {"held_out": (EVAL_SEED, False), "shifted": (SHIFTED_SEED, True)}  # name: (seed, shifted style)
EVAL_COMMAND = "python -m attnserve.demo.evaluate --write docs/models.md"


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N×H×W×3 uint8 → N×3×H×W float in [0, 1], the models' input."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    config: dict,
    count: int = 1000,
    seed: int = EVAL_SEED,
    maps: bool = True,
    shifted: bool = False,
) -> dict:
    """Task quality (``top1`` or ``map50``) and, with ``maps``, per-map pointing game and energy-in-box,
    on ``count`` scenes of the training style or, with ``shifted``, of the shifted one."""
    detector = is_detector(config)
    size = config["input_size"]
    scenes = generate("detection" if detector else "classification", seed, count, size, shifted=shifted)
    plane_kinds = (SPATIAL, CAM, ROLLOUT, SELF_ATTENTION)  # maps a pointing game can read
    map_specs = [s for s in model.output_specs if s.kind in plane_kinds] if maps else []
    tolerance = metrics.pointing_tolerance(size)
    hits = {s.name: [] for s in map_specs}
    energy = {s.name: [] for s in map_specs}
    centre_hits, uniform_energy, detections, correct = [], [], [], 0
    for start in range(0, count, 100):
        chunk = scenes[start : start + 100]
        out = predict(model, to_tensor(np.stack([s.image for s in chunk])))
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


def predict(model: nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The model's named outputs; a raw-head detector's (``RAW_HEAD``) decoded and through NMS as its
    exported graph does it (export/decode.py, export/nms.py), so it is measured as it is served."""
    out = model(images)
    raw_head = getattr(model, "RAW_HEAD", None)
    if raw_head is None:
        return {k: v.numpy() for k, v in out.items()}
    from attnserve.export import nms  # here: only raw-head detectors need the exporter's code
    from attnserve.export.decode import DecodeSpec, HeadDecoder

    spec = DecodeSpec(**raw_head)
    boxes, scores = HeadDecoder(spec, len(model.class_names), tuple(images.shape[2:]))(out)
    maps = {s.name: out[s.name].numpy() for s in model.output_specs}
    return {**nms.reference(boxes.numpy(), scores.numpy(), spec), **maps}


def markdown_report(results: dict[str, dict[str, dict]], count: int) -> str:
    """``results[model][set]`` as evaluate() returns them, for the sets in SETS."""
    lines = [
        "# Demo models",
        "",
        f"Measured on {count} generated scenes per model and set by this command, which rewrites this file:",
        "",
        f"    .venv/bin/{EVAL_COMMAND}",
        "",
        f"- **held-out**: the training style (`attnserve.models.scenes.TRAINING`), seed {EVAL_SEED};",
        "  training uses seed 1 and validation seed 2.",
        f"- **shifted**: `attnserve.models.scenes.SHIFTED`, seed {SHIFTED_SEED}, drawn by a function",
        "  training never calls: objects up to 60 % of the side (about a third larger than any in",
        "  training; the classifiers' multi-scale training resizes batches to 80–120 px, so their largest",
        "  training object spans 54 px, the largest shifted one 58 px of a 96 px input) and, in each",
        "  scene, at least one (each with even odds) of: four background textures training never sees,",
        "  JPEG quality 8–18 (training: 20–95), salt-and-pepper noise on 1–3 % of the pixels (training:",
        "  under 0.4 %), tone curves γ = e^±(0.35–0.6) (training: within e^±0.25), drop shadows.",
        "",
        "Pointing game: a hit when the arg-max of the map, upsampled to the image, lies within",
        "15 px × (image size / 224) of a ground-truth box (CAMs are read at the true class).",
        "Energy-in-box: share of the min-subtracted map's mass inside the boxes.",
        "Baselines: the image centre as the point, and a uniform map (the boxes' area fraction).",
        "",
    ]
    for name, sets in results.items():
        held, shifted = sets["held_out"], sets["shifted"]
        metric, label = ("top1", "top-1 accuracy") if "top1" in held else ("map50", "mAP@0.5")
        lines += [
            f"## {name}",
            "",
            f"{label}: **{held[metric]:.3f}** held-out, **{shifted[metric]:.3f}** shifted",
            "",
            "| map | pointing game, held-out | shifted | energy-in-box, held-out | shifted |",
            "|---|---|---|---|---|",
        ]
        for map_name, m in held["maps"].items():
            s = shifted["maps"][map_name]
            figures = (m["pointing"], s["pointing"], m["energy"], s["energy"])
            lines.append(f"| `{map_name}` | " + " | ".join(f"{v:.3f}" for v in figures) + " |")
        lines.append(
            "| centre-point / uniform-map baseline | "
            f"{held['centre_baseline_pointing']:.3f} | {shifted['centre_baseline_pointing']:.3f} | "
            f"{held['uniform_baseline_energy']:.3f} | {shifted['uniform_baseline_energy']:.3f} |"
        )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from attnserve.demo import demo_checkpoint
    from attnserve.models.zoo import DEMO_MODELS, load_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", type=Path, action="append", help="checkpoint(s) to measure (default: the demos)"
    )
    p.add_argument("--count", type=int, default=1000, help="scenes per set")
    p.add_argument("--write", type=Path, help="also write the report to this markdown file")
    a = p.parse_args()
    paths = a.checkpoint or [demo_checkpoint(n) for n in DEMO_MODELS]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        sys.exit(f"error: no checkpoint at {', '.join(missing)}")
    results = {}
    for path in paths:
        model, config = load_checkpoint(path)
        results[path.stem] = {
            name: evaluate(model, config, a.count, seed, shifted=shifted)
            for name, (seed, shifted) in SETS.items()
        }
    report = markdown_report(results, a.count)
    print(report)
    if a.write:
        a.write.parent.mkdir(parents=True, exist_ok=True)
        a.write.write_text(report)


if __name__ == "__main__":
    main()
