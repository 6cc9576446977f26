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

from export.adapter import INPUT_NAME
from export.exporters import quiet

CALIBRATION_BATCH = 8


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    converted = OnnxModel(convert_float_to_float16(proto, keep_io_types=True))
    converted.topological_sort()  # the converter appends its input casts at the end of the graph
    return converted.model


CALIBRATION_METHODS = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}


def to_int8(
    proto: onnx.ModelProto, calibration: np.ndarray, method: str = "percentile", progress: bool = True
) -> onnx.ModelProto:
    """Per-channel int8 weights, uint8 activations, ranges from what ``calibration`` produces:
    ``percentile`` (0.001st to 99.999th; on the demo models it agrees with fp32 more often) or ``minmax``.
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
            quantize_static(
                str(prepared),
                str(int8),
                batches,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
            )
        return onnx.load(int8)


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
