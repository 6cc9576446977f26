"""What a server is measured against: ONNX Runtime's ``session.run`` on preprocessed tensors (the limit)
and PyTorch eager on the same model, with the same thread count, on the CPU or the GPU."""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from attnserve.manifest import MODEL_FILE, Manifest


def _timed(
    run: Callable[[], object], batch: int, seconds: float, min_runs: int = 3
) -> tuple[float, list[float], float]:
    """Images per second over back-to-back runs, each run's seconds, and CPU seconds per image."""
    run()  # warm-up: allocations, kernel selection
    times = []
    started, cpu = time.perf_counter(), time.process_time()
    while len(times) < min_runs or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return batch * len(times) / sum(times), times, (time.process_time() - cpu) / (batch * len(times))


def onnx_limit(
    version_dir: Path,
    images: np.ndarray,
    threads: int,
    batches: list[int],
    seconds: float,
    provider: str = "cpu",
    maps: tuple[str, ...] | None = None,
) -> dict:
    """Best throughput of ``session.run`` over ``batches`` (predictions only), and batch-1 latency. With
    ``maps``, the same with those maps fetched too, under ``"with_maps"``: the two are timed in turn
    at each batch size, so that the machine's drift over a run (often 20 % here) falls on both alike.
    On CUDA, also the same runs with inputs and outputs left on the GPU (IO binding), under
    ``"device_resident"``: what the GPU alone does, without the copies every served request needs."""
    manifest = Manifest.read(version_dir / "manifest.json")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    )
    session = ort.InferenceSession(str(version_dir / MODEL_FILE), options, providers=providers)
    variants = {"predictions": list(manifest.predictions)}
    if maps is not None:
        variants["with_maps"] = [*manifest.predictions, *maps]
    runs = {variant: _host_run(session, outputs) for variant, outputs in variants.items()}
    if provider == "cuda":
        runs["device_resident"] = bound_run(session, list(manifest.predictions), "cuda")
    by_batch: dict[str, dict[int, float]] = {v: {} for v in runs}
    cpu_by_batch: dict[str, dict[int, float]] = {v: {} for v in runs}
    latency = {v: float("nan") for v in runs}
    for batch in batches:
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        for variant, prepare in runs.items():
            throughput, times, cpu_per_image = _timed(prepare(x), batch, seconds)
            by_batch[variant][batch] = round(throughput, 2)
            cpu_by_batch[variant][batch] = cpu_per_image
            if batch == 1:
                latency[variant] = float(np.median(times))
    results = {}
    for variant in runs:
        best = max(by_batch[variant], key=by_batch[variant].get)
        results[variant] = {
            "throughput_by_batch": by_batch[variant],
            "best_batch": best,
            "best_throughput": by_batch[variant][best],
            "cpu_ms_per_image": round(cpu_by_batch[variant][best] * 1e3, 3),  # at the best batch
            "batch1_latency_ms": round(latency[variant] * 1e3, 3),
            "provider": session.get_providers()[0],
        }
    result = results["predictions"]
    for variant in ("with_maps", "device_resident"):
        if variant in results:
            result[variant] = results[variant]
    return result


def _host_run(session: ort.InferenceSession, outputs: list[str]) -> Callable[[np.ndarray], Callable]:
    """``session.run`` as a server calls it: arrays in host memory in and out."""
    return lambda x: lambda: session.run(outputs, {"images": x})


def bound_run(
    session: ort.InferenceSession, outputs: list[str], device: str
) -> Callable[[np.ndarray], Callable]:
    """The same model with its input copied to ``device`` once and its outputs left there (IO binding).
    The bench binds to ``"cuda"``; ``"cpu"`` runs the same code where there is no GPU (tests)."""

    def prepare(x: np.ndarray) -> Callable:
        on_device = ort.OrtValue.ortvalue_from_numpy(x, device, 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input("images", on_device)
        for name in outputs:
            binding.bind_output(name, device)

        def run(on_device: ort.OrtValue = on_device) -> ort.IOBinding:
            # the binding points into on_device's memory: the run holds on to it
            session.run_with_iobinding(binding)
            return binding

        return run

    return prepare


def torch_eager(
    arch: str, images: np.ndarray, threads: int, batches: list[int], seconds: float, provider: str = "cpu"
) -> dict:
    """The same architecture and weights in PyTorch eager (what a user without an export stage runs); on
    CUDA, each run copies its batch to the GPU and waits for the result, as ``session.run`` does."""
    import torch  # only here: the rest of the harness and the server never need it

    from attnserve.export.sources import from_arch

    torch.set_num_threads(threads)
    device = torch.device("cuda" if provider == "cuda" else "cpu")
    model = from_arch(arch, None).module.to(device)

    def run(x: torch.Tensor) -> None:
        model(x.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    by_batch = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.from_numpy(np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:]))))
            throughput, _, _ = _timed(lambda x=x: run(x), batch, seconds)
            by_batch[batch] = round(throughput, 2)
    best = max(by_batch, key=by_batch.get)
    return {"throughput_by_batch": by_batch, "best_batch": best, "best_throughput": by_batch[best]}
