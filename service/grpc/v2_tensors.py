"""The Open Inference Protocol's tensors on the wire: FP32 and BYTES inputs (typed contents or raw
little-endian bytes, BYTES elements each behind a 4-byte length), raw outputs, version strings, and the
classification extension's "score:index:label" strings."""

import struct

import numpy as np

from attnserve.service.errors import invalid

DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float16): "FP16"}


def version_number(version: str) -> int:
    if not version:
        return 0
    if not version.isdigit():
        raise invalid(f"model version {version!r} is not a number")
    return int(version)


def fp32_tensor(tensor, raw: bytes | None) -> np.ndarray:
    shape = list(tensor.shape)
    count = int(np.prod(shape)) if shape else 0
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


def bytes_elements(tensor, raw: bytes | None) -> list[bytes]:
    """A BYTES tensor's elements: typed contents, or raw as 4-byte little-endian lengths and data."""
    if raw is None:
        elements = list(tensor.contents.bytes_contents)
    else:
        elements, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise invalid(f"input {tensor.name!r}: BYTES data ends inside an element's length")
            (length,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise invalid(f"input {tensor.name!r}: BYTES element of {length} bytes runs past the data")
            elements.append(raw[offset : offset + length])
            offset += length
    count = int(np.prod(list(tensor.shape))) if tensor.shape else 0
    if len(elements) != count:
        raise invalid(
            f"input {tensor.name!r}: shape {list(tensor.shape)} needs {count} images, got {len(elements)}"
        )
    return elements


def classification_strings(value: np.ndarray, k: int, labels: list[str], name: str) -> np.ndarray:
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
            [f"{row[c]:f}:{c}:{labels[c]}".encode() for c in order]
            for row, order in zip(value, best, strict=True)
        ],
        dtype=object,
    )


def serialize_bytes(value: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in value.reshape(-1))
