"""Seldon MLServer as the peer: installed into its own virtual environment by the harness (MLServer 1.7,
whose worker pool needs uvloop<0.22), serving the same ONNX model with adaptive batching."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2 as pb  # the Open Inference Protocol's messages
from tritonclient.grpc import service_pb2_grpc

HERE = Path(__file__).parent
REQUIREMENTS = ["mlserver>=1.7,<1.8", "uvloop<0.22", "onnxruntime", "numpy"]


def ensure_venv(folder: Path) -> Path:
    """MLServer's own environment (its dependencies clash with ours); created once, reused after."""
    mlserver = folder / "bin" / "mlserver"
    if not mlserver.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(folder / "bin" / "pip"), "install", "--quiet", *REQUIREMENTS], check=True)
    return mlserver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Peer:
    process: subprocess.Popen
    target: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_mlserver(
    venv: Path,
    work: Path,
    name: str,
    model_file: Path,
    threads: int,
    max_batch_size: int,
    max_batch_time_s: float,
    output: str = "probabilities",
    timeout: float = 120,
    cpus: set[int] | None = None,
) -> Peer:
    venv, work, model_file = venv.resolve(), work.resolve(), model_file.resolve()
    mlserver = ensure_venv(venv)
    model_dir = work / "mlserver" / name
    shutil.rmtree(work / "mlserver", ignore_errors=True)
    model_dir.mkdir(parents=True)
    shutil.copy(HERE / "mlserver_runtime.py", model_dir / "mlserver_runtime.py")
    port = free_port()
    (work / "mlserver" / "settings.json").write_text(
        json.dumps(
            {
                "grpc_port": port,
                "http_port": free_port(),
                "metrics_port": free_port(),
                "host": "127.0.0.1",
                "debug": False,
            }
        )
    )
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": name,
                "implementation": "mlserver_runtime.OnnxRuntimeModel",
                "max_batch_size": max_batch_size,
                "max_batch_time": max_batch_time_s,
                "parameters": {"uri": str(model_file)},
            }
        )
    )
    env = {**os.environ, "BENCH_THREADS": str(threads), "BENCH_OUTPUT": output, "PYTHONPATH": str(model_dir)}
    log = open(work / "mlserver.log", "w")  # noqa: SIM115 - the server writes it for its whole life
    process = subprocess.Popen(
        [str(mlserver), "start", str(work / "mlserver")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=model_dir,
    )
    if cpus:  # as the server's (bench.harness.start_server)
        os.sched_setaffinity(process.pid, cpus)
    peer = Peer(process, f"127.0.0.1:{port}")
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"MLServer exited:\n{(work / 'mlserver.log').read_text()[-3000:]}")
        try:
            with grpc.insecure_channel(peer.target) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                if stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=2).ready:
                    return peer
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    peer.stop()
    raise RuntimeError(f"MLServer not ready in {timeout} s:\n{(work / 'mlserver.log').read_text()[-3000:]}")
