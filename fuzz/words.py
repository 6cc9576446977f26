"""What the request mutators plant: the strings the server compares request fields against, and seed
images (fuzz/corpus/decode_image) and tensor-sized bytes for the bytes fields."""

import struct
from pathlib import Path

from attnserve.maps import ALL, ENCODINGS, GEOMETRIES, MAP_KINDS
from fuzz.tiny_models import CLASSIFIER, CLASSIFIER_LABELS, DETECTOR, DETECTOR_LABELS, INPUT

HERE = Path(__file__).resolve().parent
OUTPUTS = [
    "logits",
    "probabilities",
    "boxes",
    "scores",
    "classes",
    "se_gate",
    "spatial_gate",
    "cam",
    "rollout",
]
OUTPUTS += ["full_gate", "coord_h", "coord_w", "block0_heads", "block0_attention", "level0_spatial"]
WORDS = [CLASSIFIER, DETECTOR, "no_such_model", "", INPUT, "input", ALL, *MAP_KINDS, *ENCODINGS, *GEOMETRIES]
WORDS += OUTPUTS + CLASSIFIER_LABELS + DETECTOR_LABELS
WORDS += ["FP32", "BYTES", "INT64", "FP16", "UINT8", "fp32", "classification", "binary_data"]
WORDS += ["0", "1", "2", "3", "01", "+1", " 1", "1.0", "-1", "²", "１", "٣", "999999999", "9999999999"]


def images() -> list[bytes]:
    return [p.read_bytes() for p in sorted((HERE / "corpus" / "decode_image").iterdir())]


def tensors() -> list[bytes]:
    """FP32 pixels of the tiny models' sizes (little-endian), and BYTES tensors of length-prefixed
    images."""
    pictures = images()
    sizes = [n * 3 * h * w * 4 for n in (1, 2) for h, w in ((16, 16), (16, 24))]
    prefixed = [struct.pack("<I", len(p)) + p for p in pictures[:8]]
    return [bytes(s) for s in sizes] + [b"".join(prefixed[:2]), prefixed[3], struct.pack("<I", 2**32 - 1)]
