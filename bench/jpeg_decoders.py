"""Reduced-scale JPEG decoding of 1080p photos, for a 96 px model: Pillow's draft mode (what the server
does) against simplejpeg's scaled decode (libjpeg-turbo), CPU time per image, each timed twice in turn.

simplejpeg is not a dependency (docs/benchmarks.md says why); install it beside the venv to measure:

    pip install --target /tmp/simplejpeg simplejpeg
    PYTHONPATH=/tmp/simplejpeg python -m bench.jpeg_decoders
"""

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.__main__ import export
from bench.workloads import image_set

SIDE = 96
SECONDS = 3.0


def pillow_draft(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (SIDE, SIDE))
    return np.asarray(image.convert("RGB"))


def main() -> int:
    try:
        import simplejpeg
    except ImportError:
        print(__doc__, file=sys.stderr)
        return 2

    def simplejpeg_scaled(data: bytes) -> np.ndarray:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=SIDE, min_width=SIDE)

    repository = Path(".bench/repository")
    export("cbam_classifier", repository)
    photos = image_set(repository / "cbam_classifier" / "1", 8, size=(1920, 1080), seed=9200).jpegs
    for decode in (pillow_draft, simplejpeg_scaled) * 2:
        decode(photos[0])
        started, cpu, count = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - started < SECONDS:
            for photo in photos:
                shape = decode(photo).shape
                count += 1
        per_image = (time.process_time() - cpu) / count * 1e3
        print(f"{decode.__name__}: {per_image:.2f} ms CPU per 1080p JPEG, decoded to {shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
