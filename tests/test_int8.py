"""int8 that holds wherever it is served: the demo models quantised, their agreement with fp32 measured
with this CPU's int8 kernels and with the graph's reference arithmetic (what CPUs that accumulate
exactly compute), the CPU recorded, and the server's warning on a host that lacks its features."""

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from attnserve import cpu
from attnserve.api.v1 import vision_pb2 as pb
from attnserve.api.v1 import vision_pb2_grpc
from attnserve.export.cli import main
from attnserve.export.pipeline import AGREEMENT_SCENES, DEFAULT_MIN_AGREEMENT
from attnserve.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from bench.harness import start_server

# Agreement is measured on AGREEMENT_SCENES (2000) held-out scenes. Calibrated on 64 scenes (the
# default 256 would make the test slow), eca_classifier agrees on 98.75% and the detector on 99.97%
# here, with this CPU's kernels and in the reference arithmetic alike; the standard error of a share
# near 98.75% over 2000 images is sqrt(0.0125 * 0.9875 / 2000) ≈ 0.25%, so the export's default bar
# (98%) sits three of them below.
MIN_AGREEMENT = DEFAULT_MIN_AGREEMENT
CALIBRATION = "64"


@pytest.fixture(scope="module")
def int8_repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("int8")
    for arch in ("eca_classifier", "harnet_detector"):
        args = ["--arch", arch, "--precision", "int8", "--repository", str(repo)]
        assert main([*args, "--calibration-count", CALIBRATION, "--no-progress"]) == 0
    return repo


def agreement(figures: dict) -> float:
    return figures.get("top1_agreement", figures.get("detection_agreement"))


@pytest.mark.parametrize("arch", ["eca_classifier", "harnet_detector"])
def test_int8_demo_models_agree_with_fp32_on_every_kind_of_cpu(int8_repository, arch):
    version = int8_repository / arch / "1"
    manifest = Manifest.read(version / MANIFEST_FILE)
    figures = manifest.verification["int8_vs_fp32"]
    assert manifest.precision == "int8"
    assert figures["measured_on"] == f"{AGREEMENT_SCENES} held-out generated scenes"
    assert agreement(figures) >= MIN_AGREEMENT  # this CPU's kernels (AVX2 only: the saturating ones)
    assert agreement(figures["reference_arithmetic"]) >= MIN_AGREEMENT  # VNNI, AMX, ARM dot product
    assert min(figures["map_correlation"].values()) > 0.95
    assert figures["cpu"] == cpu.describe()
    assert "reduce_range" in figures["settings"]["weights"]
    proto = onnx.load(version / MODEL_FILE)
    ops = [n.op_type for n in proto.graph.node]
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops)
    # the prediction heads stay float: the graph's outputs come from float ops, not DequantizeLinear
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(producer[p] != "DequantizeLinear" for p in manifest.predictions)
    # the served graph still takes and returns float32 (classes are int64)
    session = ort.InferenceSession(str(version / MODEL_FILE), providers=["CPUExecutionProvider"])
    height, width = manifest.input.height, manifest.input.width
    x = np.random.default_rng(0).random((3, 3, height, width), dtype=np.float32)
    names = manifest.output_names()
    outputs = dict(zip(names, session.run(names, {"images": x}), strict=True))
    assert all(o.dtype == np.float32 for n, o in outputs.items() if n != "classes")


def test_server_warns_when_the_host_lacks_the_cpu_features_int8_was_verified_with(int8_repository, tmp_path):
    repo = tmp_path / "repository"
    shutil.copytree(int8_repository / "eca_classifier", repo / "eca_classifier")
    shutil.copytree(repo / "eca_classifier" / "1", repo / "eca_classifier" / "2")
    lacking = next(f for f in cpu.INT8_FEATURES if f not in (cpu.describe()["int8_features"] or []))
    manifest_path = repo / "eca_classifier" / "2" / MANIFEST_FILE
    data = json.loads(manifest_path.read_text())
    data["version"] = 2
    data["verification"]["int8_vs_fp32"]["cpu"] = {
        "machine": "x86_64",
        "model": "Elsewhere",
        "int8_features": [lacking],
    }
    manifest_path.write_text(json.dumps(data))
    server = start_server(repo, tmp_path / "server.log")
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = vision_pb2_grpc.VisionServiceStub(channel)
            here, elsewhere = (
                stub.GetModelInfo(pb.GetModelInfoRequest(model="eca_classifier", version=v), timeout=10)
                for v in (1, 2)
            )
    finally:
        assert server.stop() == 0
    assert list(here.warnings) == []  # verified on this very host
    assert len(elsewhere.warnings) == 1
    assert f"lacks {lacking}" in elsewhere.warnings[0] and "Elsewhere" in elsewhere.warnings[0]
    assert f"model eca_classifier/2: {elsewhere.warnings[0]}" in server.log()
    assert "model eca_classifier/1:" not in server.log()


def test_cpu_features_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 avx512bw avx512_vnni\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0c\n")
    assert cpu.describe(x86)["int8_features"] == ["avx2", "avx512bw", "avx512_vnni"]
    assert cpu.describe(x86)["model"] == "Some Xeon"
    assert cpu.describe(arm)["int8_features"] == ["asimddp", "i8mm"]
    assert cpu.describe(tmp_path / "missing")["int8_features"] is None  # unknown, not "none"
    vnni = cpu.describe(x86)
    avx2_only = {**vnni, "int8_features": ["avx2"]}
    assert cpu.missing_int8_features(vnni, avx2_only) == ["avx512bw", "avx512_vnni"]
    assert cpu.missing_int8_features(avx2_only, vnni) == []
    assert cpu.missing_int8_features(vnni, {"int8_features": None}) == []
