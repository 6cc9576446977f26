"""Reduced-precision variants of a verified fp32 graph: fp16 (for GPUs; inputs and outputs stay fp32)
and int8 (static QDQ quantisation calibrated on images, with ONNX Runtime's own quantisation tools)."""

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel
from tqdm import tqdm

from attnserve.export.adapter import INPUT_NAME
from attnserve.export.exporters import quiet

CALIBRATION_BATCH = 8


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    converted = OnnxModel(convert_float_to_float16(proto, keep_io_types=True))
    converted.topological_sort()  # the converter appends its input casts at the end of the graph
    return converted.model


CALIBRATION_METHODS = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
# Layers: a prediction output's nearest ones of these, and everything after them, stay float.
LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}
# What to_int8 does, for the manifest.
INT8_SETTINGS = {
    "format": "QDQ",
    "activations": "uint8, asymmetric, per tensor",
    # 7-bit weights: a pair of uint8×int8 products then fits the 16 bits that ONNX Runtime's AVX2 and
    # AVX-512 (non-VNNI) kernels add them in, so every CPU computes the same integers
    "weights": "int8, symmetric, per output channel, 7-bit range (reduce_range)",
    "float": "the last layer before each prediction output, and everything after it",
}


def to_int8(
    proto: onnx.ModelProto,
    calibration: np.ndarray,
    predictions: list[str],
    method: str = "percentile",
    progress: bool = True,
) -> onnx.ModelProto:
    """Static QDQ quantisation (see INT8_SETTINGS) with activation ranges from what ``calibration``
    produces: ``percentile`` (0.001st to 99.999th: clips the rare extremes of real photographs) or
    ``minmax``. The layers producing ``predictions`` stay float: a detector's heatmap quantised to 256
    levels has neighbouring peaks that tie and both survive the peak test, as duplicate boxes.
    ONNX Runtime holds every activation of every calibration image in memory (a ResNet-50 at 224×224 with
    256 images needs over 24 GB): calibrate large models on fewer images. (Its CalibMaxIntermediateOutputs
    option, meant to bound that, discards the collected data in onnxruntime 1.31.)"""
    with tempfile.TemporaryDirectory(prefix="attnserve-int8-") as tmp:
        fp32, prepared, int8 = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(proto, fp32)
        # shape inference and graph fusions first, as onnxruntime.quantization recommends
        batches = _Batches(calibration, progress)  # its progress bar writes to the real stderr
        with quiet():
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            graph = _named(onnx.load(prepared))
            onnx.save(graph, prepared)
            quantize_static(
                str(prepared),
                str(int8),
                batches,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
                nodes_to_exclude=heads(graph, predictions),
            )
        return onnx.load(int8)


def heads(proto: onnx.ModelProto, outputs: list[str]) -> list[str]:
    """Names of the nodes from each of ``outputs`` back to its nearest layers (LAYER_OPS), inclusive."""
    producer = {o: node for node in proto.graph.node for o in node.output}
    found: dict[str, None] = {}
    pending = list(outputs)
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = None
        if node.op_type not in LAYER_OPS:
            pending.extend(node.input)
    return list(found)


def _named(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every node named (nodes_to_exclude goes by name; ONNX allows unnamed nodes)."""
    for i, node in enumerate(proto.graph.node):
        node.name = node.name or f"attnserve_node_{i}"
    return proto


class _Batches(CalibrationDataReader):
    def __init__(self, images: np.ndarray, progress: bool) -> None:
        starts = range(0, len(images), CALIBRATION_BATCH)
        self._batches = iter(
            tqdm(
                [images[i : i + CALIBRATION_BATCH] for i in starts],
                desc="int8 calibration",
                unit="batch",
                disable=not progress,
            )
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}
