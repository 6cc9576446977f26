"""The Open Inference Protocol's (KServe V2) tensors, shared by its gRPC front-end
(service/grpc/inference_v2.py) and its HTTP one (service/http/rest.py): an input tensor (FP32 pixels or
BYTES encoded images, as typed values or raw little-endian bytes, BYTES elements each behind a 4-byte
length) into the data plane's InferRequest; the outputs asked for out of its InferResult, numbers or
the classification extension's "score:index:label" strings; version strings."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from attnserve.service.errors import invalid
from attnserve.service.messages import ImageInput, InferRequest, InferResult

if TYPE_CHECKING:
    from attnserve.manifest import Manifest

DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float16): "FP16"}


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None = None  # little-endian data: gRPC's raw_input_contents, HTTP's binary extension
    values: Sequence | None = None  # typed contents: gRPC's contents, HTTP's JSON "data" (flattened)


@dataclass
class OutputRequest:
    name: str
    classification: int | None = None  # the classification extension's k


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # numbers, or (BYTES) an object array of bytes

    def raw(self) -> bytes:
        if self.datatype == "BYTES":
            return serialize_bytes(self.data)
        return np.ascontiguousarray(self.data).tobytes()


MAX_VERSION_DIGITS = 9  # a version is a whole number; more digits than this is not one a repository has


def version_number(version: str) -> int:
    """A request's version string: "" for the latest (0), else ASCII digits ("²" is a digit to Python)."""
    if not version:
        return 0
    if not (version.isascii() and version.isdigit()) or len(version) > MAX_VERSION_DIGITS:
        shown = version if len(version) <= 20 else version[:20] + "…"
        raise invalid(f"model version {shown!r} is not a whole number of at most {MAX_VERSION_DIGITS} digits")
    return int(version)


def infer_request(
    model: str,
    version: str,
    tensor: InputTensor,
    outputs: list[OutputRequest],
    deadline: float | None,
    max_images: int,
) -> InferRequest:
    """The data plane's request for one input tensor: FP32 [N, 3, H, W] pixels or BYTES [N] images."""
    request = InferRequest(
        model, version_number(version), tensor.name, [o.name for o in outputs], deadline=deadline
    )
    if tensor.datatype == "BYTES":
        request.images = [ImageInput(encoded=data) for data in bytes_elements(tensor, max_images)]
    elif tensor.datatype == "FP32":
        request.tensor = fp32_tensor(tensor)
    else:
        raise invalid(
            f"input {tensor.name!r} has datatype {tensor.datatype}; send FP32 [N, 3, H, W] pixels "
            "in [0, 1] or BYTES [N] encoded images"
        )
    return request


def output_tensors(result: InferResult, outputs: list[OutputRequest]) -> list[OutputTensor]:
    """The outputs asked for (every one when none is), classification strings where asked."""
    manifest = result.manifest
    outputs = outputs or [OutputRequest(name) for name in manifest.output_names()]
    tensors = []
    for output in outputs:
        value = result.outputs[output.name]
        if output.classification is not None:
            value = classification_strings(value, output.classification, manifest, output.name)
            tensors.append(OutputTensor(output.name, "BYTES", list(value.shape), value))
        else:
            tensors.append(OutputTensor(output.name, DATATYPES[value.dtype], list(value.shape), value))
    return tensors


def element_count(tensor: InputTensor, limit: int | None = None) -> int:
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


def fp32_tensor(tensor: InputTensor) -> np.ndarray:
    count = element_count(tensor)
    shape = list(tensor.shape)
    if len(shape) != 4 or count == 0:  # then every dimension is at most the data's length
        raise invalid(
            f"input {tensor.name!r} has shape {shape}; FP32 pixels are [N, 3, H, W], none of them 0"
        )
    raw = tensor.raw
    if raw is not None:
        if len(raw) != count * 4:
            raise invalid(
                f"input {tensor.name!r}: shape {shape} of FP32 needs {count * 4} bytes, got {len(raw)}"
            )
        return np.frombuffer(raw, "<f4").reshape(shape)
    values = tensor.values if tensor.values is not None else ()
    if len(values) != count:
        raise invalid(f"input {tensor.name!r}: shape {shape} needs {count} FP32 values, got {len(values)}")
    try:
        return np.asarray(values, np.float32).reshape(shape)
    except (TypeError, ValueError):
        raise invalid(f"input {tensor.name!r}: FP32 values must be numbers") from None


def bytes_elements(tensor: InputTensor, max_images: int) -> list[bytes]:
    """A BYTES tensor's elements (each one encoded image): typed values, or raw as 4-byte
    little-endian lengths and data. The count is checked against ``max_images`` from the shape first,
    and parsing stops at the first element past it, so a flood of tiny elements costs nothing."""
    count = element_count(tensor, max_images)
    raw = tensor.raw
    if raw is None:
        values = tensor.values if tensor.values is not None else ()
        if len(values) != count:
            raise invalid(
                f"input {tensor.name!r}: shape {list(tensor.shape)} needs {count} images, got {len(values)}"
            )
        if not all(isinstance(v, bytes) for v in values):
            raise invalid(f"input {tensor.name!r}: BYTES images go as binary data, not as text")
        return list(values)
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
