"""PyTorch → ONNX with whichever of torch's two exporters handles the model.

Models we did not write often defeat one exporter but not the other: shape-dependent pooling breaks the
TorchScript-based one, code that specialises the batch size breaks torch.export. The torch.export-based
exporter goes first; a result only counts if its batch axis is dynamic and it runs in ONNX Runtime at
two batch sizes other than the example's.
"""

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
import torch

from attnserve.export.adapter import INPUT_NAME, ExportAdapter
from attnserve.export.errors import ExportError

TORCH_EXPORT = "torch.export"
TORCHSCRIPT = "torchscript"
EXPORTERS = (TORCH_EXPORT, TORCHSCRIPT)
MIN_OPSET = 18  # the torch.export-based exporter's minimum


def export_onnx(
    adapter: ExportAdapter, sample: torch.Tensor, opset: int, exporter: str = "auto"
) -> tuple[onnx.ModelProto, str, list[str]]:
    """The exported graph, the exporter that produced it, and why any exporter tried before it failed."""
    failures: list[str] = []
    for name in EXPORTERS if exporter == "auto" else (exporter,):
        try:
            with quiet():
                proto = _EXPORT[name](adapter, sample, opset)
            _check_dynamic_batch(proto, sample)
            return proto, name, failures
        except ExportError:
            raise
        except Exception as exc:  # any failure of one exporter means: try the other
            failures.append(f"{name}: {reason(exc)}")
    raise ExportError(
        "the model could not be exported to ONNX. "
        + " ".join(f"[{f}]" for f in failures)
        + " Rewrite the failing operation in forward() with standard tensor ops (for example, pool with "
        "x.mean((2, 3)) / x.amax((2, 3)) instead of shape-dependent pooling, and never hard-code the batch "
        "size), or try --exporter torchscript / torch.export explicitly."
    )


def first_line(exc: BaseException, limit: int = 400) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch.onnx colours its messages
    return (text.splitlines()[0] if text else "")[:limit]


def reason(exc: BaseException) -> str:
    """The innermost cause: torch.export wraps the real problem in a generic "step n/3" error."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(exc)}"


def _torch_export(adapter: ExportAdapter, sample: torch.Tensor, opset: int) -> onnx.ModelProto:
    program = torch.onnx.export(
        adapter,
        (sample,),
        dynamo=True,
        external_data=False,  # one self-contained file (the default writes weights beside it)
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=adapter.output_names,
        dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
        verbose=False,
    )
    return program.model_proto


def _torchscript_export(adapter: ExportAdapter, sample: torch.Tensor, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    names = adapter.output_names
    torch.onnx.export(
        adapter,
        (sample,),
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=names,
        dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *names)},
        do_constant_folding=True,
    )
    return onnx.load_from_string(buffer.getvalue())


_EXPORT = {TORCH_EXPORT: _torch_export, TORCHSCRIPT: _torchscript_export}


def _check_dynamic_batch(proto: onnx.ModelProto, sample: torch.Tensor) -> None:
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if batch_dim.HasField("dim_value"):
        raise RuntimeError(f"the exporter fixed the batch size at {batch_dim.dim_value}")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the example has 2 images: these prove the batch axis is really free
        images = np.resize(sample.numpy(), (batch, *sample.shape[1:])).astype(np.float32)
        try:
            session.run(None, {INPUT_NAME: images})
        except Exception as exc:
            raise RuntimeError(f"the exported graph fails at batch size {batch}: {first_line(exc)}") from exc


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters and the quantiser print progress and warnings meant for their developers; keep the
    report readable (failures still surface as exceptions)."""
    names = ("", "torch.onnx", "torch.export", "torch._dynamo", "onnxscript")  # "": the root logger
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
