"""One benchmark run, on one machine, with one thread setting: the limit (ONNX Runtime ``session.run``),
PyTorch eager, attnserve end to end (vision API: JPEGs at the model's size and at 1080p, with and without
maps, batching on and off; Open Inference Protocol with tensors) and the peer (MLServer with adaptive
batching, same tensors). Prints and writes the ratios as JSON and markdown.

    python -m bench --quick                       # the demo classifier, no peer: a few minutes
    python -m bench --docs docs/benchmarks.md     # everything, and the table into the docs
    python -m bench --profile short --cpus 0-7    # on a larger machine: the server and session.run on
                                                  # cores 0-7, the load generator on the others
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import grpc
import onnxruntime as ort

from attnserve.client import AsyncVisionClient
from attnserve.client.clients import DEFAULT_CONNECTIONS
from attnserve.export.cli import main as export_main
from attnserve.manifest import MANIFEST_FILE, Manifest
from attnserve.models.outputs import ROLLOUT
from bench import limits, report
from bench.harness import ServerProcess, start_server
from bench.loadgen import LoadResult, run_load, run_stream
from bench.peer import start_mlserver
from bench.workloads import ImageSet, TensorCalls, VisionCalls, image_set

PROFILES = {
    "quick": dict(
        models=["cbam_classifier"],
        concurrencies=[1, 4, 16],
        requests=400,
        seconds=5.0,
        batches=[1, 4, 16],
        batch_seconds=1.0,
        peer=False,
        int8=False,
        int8_options={},
    ),
    "full": dict(
        models=["cbam_classifier", "vit_classifier", "cbam_resnet50"],
        concurrencies=[1, 4, 16, 64],
        requests=4000,
        seconds=20.0,
        batches=[1, 2, 4, 8, 16, 32],
        batch_seconds=3.0,
        peer=True,
        int8=True,
        # calibration holds every activation of every image: a ResNet-50 at 224 with 256 images needs
        # over 24 GB, so 16 here; its random weights make top-1 fragile: agreement reported, not required
        # the ViT's int8 (quantised attention and MatMuls) is measured, its agreement reported, not required
        int8_options={
            "cbam_resnet50": ["--calibration-count", "16", "--min-agreement", "0"],
            "vit_classifier": ["--min-agreement", "0"],
        },
    ),
    # every contender but the peer and int8, in short loads: for a lent machine's few minutes (a GPU)
    "short": dict(
        models=["cbam_classifier"],
        concurrencies=[1, 16, 64],
        requests=50000,
        seconds=6.0,
        batches=[1, 4, 16, 64],
        batch_seconds=1.5,
        peer=False,
        int8=False,
        int8_options={},
    ),
}
COMPARE_AT = report.COMPARE_AT  # the concurrency at which variants and the peer are compared
PER_REQUEST = report.PER_REQUEST
START_TIMEOUT_S = 300  # on CUDA a server warms up every batch size before it is ready (stages/run.py)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--quick", action="store_true", help="--profile quick")
    parser.add_argument("--models", nargs="+", help="these models instead of the profile's")
    parser.add_argument(
        "--cpus",
        type=cpu_list,
        help="cores for session.run, PyTorch eager and the server, e.g. 0-7 (default: all, shared with the "
        "load generator); the load generator runs on the others",
    )
    parser.add_argument("--threads", type=int, help="threads for every contender (default: one per core)")
    parser.add_argument(
        "--workers", type=int, help="worker processes of the workers variant (default: one per thread)"
    )
    parser.add_argument("--max-batch", type=int, default=16, help="the server's dynamic batches, at most")
    parser.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help="connections the vision API's load generator takes turns over (the client's default)",
    )
    parser.add_argument("--work", type=Path, default=Path(".bench"), help="exported models, peer venv, logs")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--docs", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    profile_name = "quick" if args.quick else args.profile
    profile = {**PROFILES[profile_name]}
    profile["models"] = args.models or profile["models"]
    args.cpus = args.cpus or os.sched_getaffinity(0)
    args.threads = args.threads or len(args.cpus)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {
        "command": command.strip(),
        "profile": profile_name,
        "machine": machine(),
        "cpus": len(args.cpus),
        "threads": args.threads,
        "provider": args.provider,
        "connections": args.connections,
        "versions": versions(),
        "models": {},
    }
    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in profile["models"]:
        results["models"][name] = bench_model(name, args, profile)
        # after each model, so a run that fails later still leaves what it measured
        (args.out / "latest.json").write_text(json.dumps(results, indent=2))
    results["seconds"] = round(time.time() - started, 1)
    results["ratios"] = {name: report.ratios(r) for name, r in results["models"].items()}
    (args.out / "latest.json").write_text(json.dumps(results, indent=2))
    table = report.markdown(results)
    (args.out / "latest.md").write_text(table)
    if args.docs:
        previous = args.docs.read_text() if args.docs.exists() else ""
        args.docs.write_text(report.document(results, table, previous))
    print(table)
    return 0


def bench_model(name: str, args: argparse.Namespace, profile: dict) -> dict:
    repository = args.work / "repository"
    export(name, repository)
    version_dir = repository / name / "1"
    log(f"{name}: images")
    images = image_set(version_dir, 32, provider=args.provider)
    photos = image_set(version_dir, 8, size=(1920, 1080), seed=9200, provider=args.provider)
    out: dict = {}
    log(f"{name}: ONNX Runtime session.run (the limit)")
    rollout = any(a.kind == ROLLOUT for a in Manifest.read(version_dir / MANIFEST_FILE).attention)
    with on_cores(args.cpus):
        # with a rollout, also what computing it in the graph costs ONNX Runtime itself
        out["limit"] = limits.onnx_limit(
            version_dir,
            images.tensors,
            args.threads,
            profile["batches"],
            profile["batch_seconds"],
            args.provider,
            maps=(ROLLOUT,) if rollout else None,
        )
        if rollout:
            out["limit_rollout"] = out["limit"].pop("with_maps")
        log(f"{name}: PyTorch eager")
        out["eager"] = limits.torch_eager(
            name, images.tensors, args.threads, profile["batches"], profile["batch_seconds"], args.provider
        )
    # the load generator keeps off the server's cores, where it has cores of its own
    with on_cores(load_generator_cores(args.cpus)):
        serve_and_load(name, args, profile, repository, images, photos, rollout, out)
    if profile["int8"]:
        log(f"{name}: int8")
        export(name, repository, precision="int8", int8_options=profile["int8_options"].get(name, []))
        int8_dir = repository / f"{name}_int8" / "1"
        out["limit_int8"] = limits.onnx_limit(
            int8_dir,
            images.tensors,
            args.threads,
            profile["batches"],
            profile["batch_seconds"],
            args.provider,
        )
        manifest = json.loads((int8_dir / "manifest.json").read_text())
        out["int8_top1_agreement"] = manifest["verification"]["int8_vs_fp32"]["top1_agreement"]
    return out


def serve_and_load(
    name: str,
    args: argparse.Namespace,
    profile: dict,
    repository: Path,
    images: ImageSet,
    photos: ImageSet,
    rollout: bool,
    out: dict,
) -> None:
    """attnserve's variants under load, then the peer's, into ``out``."""
    version_dir = repository / name / "1"
    server_args = [
        "--intra-op-threads",
        str(args.threads),
        "--decode-threads",
        str(args.threads),
        "--provider",
        args.provider,
        "--max-queue-size",
        "4096",
    ]
    max_batch = str(args.max_batch)
    load = dict(max_requests=profile["requests"], max_seconds=profile["seconds"])
    work = args.work / "logs"
    work.mkdir(parents=True, exist_ok=True)

    server = start_server(
        repository,
        work / f"{name}-batching.log",
        *server_args,
        "--max-batch-size",
        max_batch,
        "--max-queue-delay-ms",
        "2",
        cpus=args.cpus,
        timeout=START_TIMEOUT_S,
    )
    try:
        log(f"{name}: attnserve, JPEGs at the model's size, concurrency {profile['concurrencies']}")
        out["attnserve"] = {
            c: vision(server, name, images, [], c, load, args.connections) for c in profile["concurrencies"]
        }
        log(f"{name}: attnserve variants at concurrency {COMPARE_AT}")
        out["attnserve_maps"] = vision(server, name, images, ["all"], COMPARE_AT, load, args.connections)
        if rollout:
            out["attnserve_rollout"] = vision(
                server, name, images, [ROLLOUT], COMPARE_AT, load, args.connections
            )
        out["attnserve_1080p"] = vision(server, name, photos, [], COMPARE_AT, load, args.connections)
        out["attnserve_several_per_request"] = vision(
            server, name, images, [], COMPARE_AT // PER_REQUEST, load, args.connections, PER_REQUEST
        )
        out["attnserve_stream"] = stream(server, name, images, COMPARE_AT, load)
        out["attnserve_v2_tensors"] = tensors(server.target, name, images, COMPARE_AT, load)
    finally:
        server.stop()
    server = start_server(
        repository,
        work / f"{name}-no-batching.log",
        *server_args,
        "--max-batch-size",
        "1",
        cpus=args.cpus,
        timeout=START_TIMEOUT_S,
    )
    try:
        out["attnserve_no_batching"] = vision(server, name, images, [], COMPARE_AT, load, args.connections)
    finally:
        server.stop()
    # by default one worker process per thread of the run, each with one ONNX Runtime thread: the same cores
    workers = args.workers or args.threads
    log(f"{name}: attnserve with {workers} worker processes")
    server = start_server(
        repository,
        work / f"{name}-workers.log",
        *server_args,
        "--workers",
        str(workers),
        "--intra-op-threads",
        str(max(1, args.threads // workers)),
        "--decode-threads",
        "2",
        "--max-batch-size",
        max_batch,
        "--max-queue-delay-ms",
        "2",
        cpus=args.cpus,
        timeout=START_TIMEOUT_S,
    )
    try:
        out["attnserve_workers"] = {
            c: vision(server, name, images, [], c, load, args.connections) for c in profile["concurrencies"]
        }
        out["attnserve_workers_1080p"] = vision(server, name, photos, [], COMPARE_AT, load, args.connections)
        out["workers"] = workers
    finally:
        server.stop()
    if profile["peer"]:
        log(f"{name}: MLServer (adaptive batching) with the same tensors")
        peer = start_mlserver(
            args.work / "mlserver-venv",
            work,
            name,
            (version_dir / "model.onnx").resolve(),
            args.threads,
            args.max_batch,
            0.002,
            cpus=args.cpus,
        )
        try:
            out["mlserver_v2_tensors"] = tensors(peer.target, name, images, COMPARE_AT, load)
        finally:
            peer.stop()


def export(name: str, repository: Path, precision: str = "fp32", int8_options: list[str] = ()) -> None:
    target = name if precision == "fp32" else f"{name}_{precision}"
    if not (repository / target / "1").is_dir():
        log(f"{target}: exporting")
        extra = [] if precision == "fp32" else ["--precision", precision, "--name", target, *int8_options]
        code = export_main(
            ["--arch", name, "--repository", str(repository), "--version", "1", "--no-progress", *extra]
        )
        if code:
            raise SystemExit(f"could not export {target}")


def vision(
    server: ServerProcess,
    model: str,
    images: ImageSet,
    select: list[str],
    concurrency: int,
    load: dict,
    connections: int = DEFAULT_CONNECTIONS,
    per_request: int = 1,
) -> dict:
    """The vision API under load, ``per_request`` JPEGs a request."""

    async def go(calls: VisionCalls) -> LoadResult:
        return await run_load(calls, concurrency, check=calls.check, images_per_request=per_request, **load)

    return _measured(server, model, images, select, connections, per_request, go)


def stream(server: ServerProcess, model: str, images: ImageSet, in_flight: int, load: dict) -> dict:
    """One StreamClassify stream that keeps ``in_flight`` frames unanswered: what one video client
    sending as fast as it is answered gets."""

    async def go(calls: VisionCalls) -> LoadResult:
        return await run_stream(calls.stream, in_flight, check=calls.check, **load)

    return _measured(server, model, images, [], 1, 1, go)


def _measured(
    server: ServerProcess,
    model: str,
    images: ImageSet,
    select: list[str],
    connections: int,
    per_request: int,
    load: Callable[[VisionCalls], Awaitable[LoadResult]],
) -> dict:
    """A load's summary with the CPU the server and this load generator each used (on a machine they
    share, the generator's share is what the server could not have) and the replies' stage timings."""

    async def go() -> tuple[LoadResult, dict]:
        async with AsyncVisionClient(server.target, timeout=120, connections=connections) as client:
            calls = VisionCalls(client, model, images, select, per_request)
            return await load(calls), calls.stage_ms()

    server_before, client_before = server.cpu_seconds(), time.process_time()
    result, stage_ms = asyncio.run(go())
    server_cpu, client_cpu = server.cpu_seconds() - server_before, time.process_time() - client_before
    summary = _finished(result)
    done = max(1, result.requests * result.images_per_request)
    summary.update(
        server_cores=round(server_cpu / result.seconds, 3),
        client_cores=round(client_cpu / result.seconds, 3),
        server_cpu_ms_per_image=round(server_cpu / done * 1e3, 3),
        client_cpu_ms_per_image=round(client_cpu / done * 1e3, 3),
        # medians of the replies' own stage timings: the rest of a call's latency is outside the stages
        # (gRPC and protobuf on both sides, the event loop, the client)
        server_stages_ms=stage_ms,
    )
    return summary


def tensors(target: str, model: str, images: ImageSet, concurrency: int, load: dict) -> dict:
    async def go():
        size = 64 * 1024 * 1024
        options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            calls = TensorCalls(channel, model, images)
            return await run_load(calls, concurrency, check=calls.check, **load)

    return _finished(asyncio.run(go()))


def _finished(result: LoadResult) -> dict:
    summary = result.summary()
    if result.errors:
        summary["error_examples"] = result.error_examples
    s = summary
    speed = f"{s['throughput_images_per_s']} img/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"
    log(f"  c={s['concurrency']}: {speed}, {s['requests']} ok, {s['errors']} errors")
    return summary


def cpu_list(text: str) -> set[int]:
    """``0-7,12``: cores by number, as taskset and the kernel's cpusets write them."""
    cores: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    unknown = cores - os.sched_getaffinity(0)
    if unknown:
        raise argparse.ArgumentTypeError(f"cores {sorted(unknown)} are not ours to run on")
    return cores


def load_generator_cores(server_cores: set[int]) -> set[int]:
    """Our cores but the server's; all of ours where the server has them all (shared)."""
    return os.sched_getaffinity(0) - server_cores or server_cores


@contextlib.contextmanager
def on_cores(cores: set[int]) -> Iterator[None]:
    """This process (the limit's threads, the load generator) on ``cores`` for a while."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def machine() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    gpu = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def versions() -> dict:
    # the onnxruntime imported (onnxruntime-gpu is another distribution of the same module)
    return {
        "attnserve": version("attnserve"),
        "onnxruntime": ort.__version__,
        **{p: version(p) for p in ("torch", "grpcio", "numpy", "pillow")},
    }


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
