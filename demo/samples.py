"""The explorer page's sample images (service/http/explorer/static/samples/), drawn by the scene
generator from fixed seeds so anyone can redraw them:

    python -m attnserve.demo.samples        # rewrites them; tests/test_explorer.py checks they match
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from attnserve.models.scenes import classification_scene, detection_scene, shifted_scene

FOLDER = Path(__file__).resolve().parent.parent / "service" / "http" / "explorer" / "static" / "samples"
SEED = 4242  # apart from training (1), validation (2) and evaluation (1000, 2000)


def samples() -> dict[str, np.ndarray]:
    """File name → H×W×3 uint8 image: larger than the models' inputs, as a user's image would be."""
    wide = detection_scene(SEED, 46, 384).image  # its three objects lie within the rows kept
    return {
        # a star all three demo classifiers name at this size (some of the first scenes they do not)
        "one_shape.png": classification_scene(SEED, 27, 192).image,
        "several_shapes.png": detection_scene(SEED, 1, 256).image,
        "shifted_style.png": shifted_scene("detection", SEED, 2, 256).image,
        "wide.png": wide[84:300],  # 384×216, 16:9: the letterbox or crop to undo shows
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=FOLDER)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, image in samples().items():
        Image.fromarray(image).save(args.out / name, optimize=True)
        print(args.out / name)


if __name__ == "__main__":
    main()
