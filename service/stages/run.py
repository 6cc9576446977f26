"""One ONNX Runtime session per model version: providers, threads, warm-up, and runs that fetch only the
outputs asked for (a request without maps pays nothing for them)."""

import functools
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from attnserve import cpu
from attnserve.manifest import MANIFEST_FILE, MODEL_FILE, Manifest

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class DigestMismatch(RuntimeError):
    """The model file's bytes are not those its manifest (or, ``trusted``, model_digests) names: a copy
    not finished, or a corrupt or altered file."""

    def __init__(self, message: str, trusted: bool) -> None:
        super().__init__(message)
        self.trusted = trusted


def providers_for(choice: str) -> list[str]:
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        if CUDA not in available:
            raise RuntimeError(
                "provider cuda was asked for, but this ONNX Runtime has no CUDA provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu on a GPU machine, or use auto"
            )
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


class OnnxModel:
    def __init__(
        self,
        version_dir: Path,
        provider: str,
        intra_op_threads: int,
        inter_op_threads: int,
        trusted_sha256: str | None = None,
    ) -> None:
        """``trusted_sha256``: the model file's digest from a list kept apart from the repository (the
        manifest's own can be rewritten with the file); checked on the very bytes the session loads."""
        started = time.perf_counter()
        self.manifest = Manifest.read(version_dir / MANIFEST_FILE)
        data = (version_dir / MODEL_FILE).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self.manifest.sha256 and digest != self.manifest.sha256:
            raise DigestMismatch(
                f"{version_dir / MODEL_FILE} does not match its manifest's sha256 (a copy not finished, "
                "or a corrupt file); re-export or copy it again",
                trusted=False,
            )
        if trusted_sha256 is not None and digest != trusted_sha256:
            raise DigestMismatch(
                f"{version_dir / MODEL_FILE} does not match its sha256 in model_digests", trusted=True
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(data, options, providers=providers_for(provider))
        self.provider = self.session.get_providers()[0]
        self.input_name = self.manifest.input.name
        self.warnings = host_warnings(self.manifest, self.provider)
        self.load_seconds = time.perf_counter() - started

    def run(self, images: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.session.run(outputs, {self.input_name: images}), strict=True))

    def warm_up(self, max_batch: int) -> None:
        """First runs allocate and tune; do them before the model is marked ready. On CUDA, every batch
        size the batcher can form: cuDNN chooses its convolution algorithms per input shape, by timing
        them all on a shape's first run (ONNX Runtime's default search), which a request must not wait
        for."""
        shape = (1, 3, self.manifest.input.height, self.manifest.input.width)
        batches = range(1, max_batch + 1) if self.provider == CUDA else sorted({1, max_batch})
        for batch in batches:
            images = np.full((batch, *shape[1:]), 0.5, np.float32)
            self.run(images, self.manifest.predictions)
            self.run(images, self.manifest.output_names())


@functools.cache
def _host_cpu() -> dict:
    return cpu.describe()


def host_warnings(manifest: Manifest, provider: str) -> list[str]:
    """Why this host may compute other results than those the model was verified with."""
    verified_on = manifest.verification.get("int8_vs_fp32", {}).get("cpu")
    if manifest.precision != "int8" or provider != CPU or not verified_on:
        return []
    missing = cpu.missing_int8_features(verified_on, _host_cpu())
    if not missing:
        return []
    return [
        f"int8 agreement with fp32 was verified on {verified_on['model'] or 'a CPU'} with "
        f"{', '.join(verified_on['int8_features'])}; this host ({_host_cpu()['model'] or 'unknown CPU'}) "
        f"lacks {', '.join(missing)}, so its int8 kernels are not the ones verified"
    ]
