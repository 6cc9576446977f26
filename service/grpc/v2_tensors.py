"""The Open Inference Protocol's tensors on the wire: FP32 and BYTES inputs (typed contents or raw
little-endian bytes, BYTES elements each behind a 4-byte length), raw outputs, version strings, and the
classification extension's "score:index:label" strings."""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

import numpy as np

from attnserve.service.errors import invalid

if TYPE_CHECKING:
    from attnserve.api.inference.v2 import grpc_predict_v2_pb2 as pb
    from attnserve.manifest import Manifest

DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float16): "FP16"}


MAX_VERSION_DIGITS = 9  # a version is a whole number; more digits than this is not one a repository has


def version_number(version: str) -> int:
    """A request's version string: "" for the latest (0), else ASCII digits ("²" is a digit to Python)."""
    if not version:
        return 0
    if not (version.isascii() and version.isdigit()) or len(version) > MAX_VERSION_DIGITS:
        shown = version if len(version) <= 20 else version[:20] + "…"
        raise invalid(f"model version {shown!r} is not a whole number of at most {MAX_VERSION_DIGITS} digits")
    return int(version)


def element_count(tensor: pb.ModelInferRequest.InferInputTensor, limit: int | None = None) -> int:
    """The number of elements a tensor's shape promises, checked before any data is read: a shape,
    no negative dimension, and (``limit``) not more elements than allowed."""
    shape = list(tensor.shape)
    if not shape:
        raise invalid(f"input {tensor.name!r} has no shape; give its dimensions, e.g. [N, 3, H, W] or [N]")
    if any(d < 0 for d in shape):
        raise invalid(f"input {tensor.name!r} has shape {shape}; dimensions cannot be negative")
    count = math.prod(shape)  # Python integers: no overflow
    if limit is not None and count > limit:
        raise invalid(f"input {tensor.name!r} of shape {shape} holds {count} elements; at most {limit} here")
    return count


def fp32_tensor(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    count = element_count(tensor)
    shape = list(tensor.shape)
    if len(shape) != 4 or count == 0:  # then every dimension is at most the data's length
        raise invalid(
            f"input {tensor.name!r} has shape {shape}; FP32 pixels are [N, 3, H, W], none of them 0"
        )
    if raw is not None:
        if len(raw) != count * 4:
            raise invalid(
                f"input {tensor.name!r}: shape {shape} of FP32 needs {count * 4} bytes, got {len(raw)}"
            )
        return np.frombuffer(raw, "<f4").reshape(shape)
    values = tensor.contents.fp32_contents
    if len(values) != count:
        raise invalid(f"input {tensor.name!r}: shape {shape} needs {count} fp32_contents, got {len(values)}")
    return np.asarray(values, np.float32).reshape(shape)


def bytes_elements(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, max_images: int
) -> list[bytes]:
    """A BYTES tensor's elements (each one encoded image): typed contents, or raw as 4-byte
    little-endian lengths and data. The count is checked against ``max_images`` from the shape first,
    and parsing stops at the first element past it, so a flood of tiny elements costs nothing."""
    count = element_count(tensor, max_images)
    if raw is None:
        if len(tensor.contents.bytes_contents) != count:
            raise invalid(
                f"input {tensor.name!r}: shape {list(tensor.shape)} needs {count} images, "
                f"got {len(tensor.contents.bytes_contents)}"
            )
        return list(tensor.contents.bytes_contents)
    elements, offset = [], 0
    while offset < len(raw):
        if len(elements) == count:
            raise invalid(
                f"input {tensor.name!r}: BYTES data holds more than the {count} images its shape says"
            )
        if offset + 4 > len(raw):
            raise invalid(f"input {tensor.name!r}: BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise invalid(f"input {tensor.name!r}: BYTES element of {length} bytes runs past the data")
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise invalid(
            f"input {tensor.name!r}: shape {list(tensor.shape)} needs {count} images, got {len(elements)}"
        )
    return elements


def classification_strings(value: np.ndarray, k: int, manifest: Manifest, name: str) -> np.ndarray:
    if value.ndim != 2:
        raise invalid(
            f"the classification parameter needs an [N, classes] output; {name!r} is {list(value.shape)}"
        )
    if k <= 0:
        raise invalid(f"the classification parameter must be positive, not {k}")
    k = min(k, value.shape[1])
    best = np.argsort(-value, axis=1, kind="stable")[:, :k]
    return np.array(
        [
            [f"{row[c]:f}:{c}:{manifest.label(c)}".encode() for c in order]
            for row, order in zip(value, best, strict=True)
        ],
        dtype=object,
    )


def serialize_bytes(value: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in value.reshape(-1))
