"""ONNX Runtime's own telemetry stays off: its Linux builds (1.29+) write a device id and an event store
under ~/.cache and upload usage events unless ORT_DISABLE_TELEMETRY is set before it is imported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnserve.manifest import MODEL_FILE


def run_python(code: str, home: Path) -> None:
    """``code`` in a fresh interpreter whose home is ``home``, without the opt-out in its environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    subprocess.run([sys.executable, "-c", code], env={**env, "HOME": str(home)}, check=True, timeout=120)


def test_neither_the_server_nor_the_exporter_lets_onnx_runtime_phone_home(demo_repository, tmp_path):
    model = demo_repository / "eca_classifier" / "1"
    plain = tmp_path / "plain"
    run_python(f"import onnxruntime; onnxruntime.InferenceSession({str(model / MODEL_FILE)!r})", plain)
    if not (plain / ".cache").exists():
        pytest.skip("this onnxruntime writes no telemetry state: nothing to switch off")
    ours = tmp_path / "ours"
    # the server's and the exporter's own import paths, each loading a model into ONNX Runtime
    folder, file = repr(str(model)), repr(str(model / MODEL_FILE))
    run_python(
        "import pathlib, attnserve.service.stages.run as r; "
        f"r.OnnxModel(pathlib.Path({folder}), 'cpu', 1, 1)",
        ours,
    )
    run_python(f"import onnx, attnserve.export.verify as v; v.cpu_session(onnx.load({file}))", ours)
    assert not (ours / ".cache").exists(), sorted(str(p) for p in (ours / ".cache").rglob("*"))
