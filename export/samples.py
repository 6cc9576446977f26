"""Images the exporter runs the model on: generated scenes, uniform noise, or a folder of the user's images,
all converted to RGB and fitted to the model's input by the same code the server uses (attnserve.imaging)."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from attnserve.export.errors import ExportError
from attnserve.imaging import fit, to_input, upright_rgb
from attnserve.manifest import DETECTION
from attnserve.models.scenes import generate

VERIFY_SEED = 4242  # held out from training (seeds 1, 2) and evaluation (1000)
CALIBRATION_SEED = 77
AGREEMENT_SEED = 4343
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def scene_images(task: str, count: int, size: tuple[int, int], resize: str, seed: int) -> np.ndarray:
    """``count`` generated scenes of the task, fitted to ``size`` (H, W): N×3×H×W in [0, 1]."""
    height, width = size
    kind = "detection" if task == DETECTION else "classification"
    scenes = generate(kind, seed, count, max(height, width), workers=1)
    return to_input([fit(Image.fromarray(s.image), height, width, resize)[0] for s in scenes])


def noise_images(count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3, *size), dtype=np.float32)


def folder_images(folder: Path, size: tuple[int, int], resize: str, limit: int) -> np.ndarray:
    """Up to ``limit`` images from ``folder`` (sorted by name; unreadable files are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"--calibration {str(folder)!r} is not a folder; pass a folder of images.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in files[:limit]:
        try:
            with Image.open(path) as im:
                rgb = upright_rgb(im)
        except (OSError, UnidentifiedImageError):
            continue
        images.append(fit(rgb, *size, resize)[0])
    if not images:
        raise ExportError(
            f"--calibration {str(folder)!r} holds no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "add a few hundred images like those the model will serve."
        )
    return to_input(images)
