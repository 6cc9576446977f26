"""One import namespace, layers that point down: what `pip install .` installs, and what each entry
point loads."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# the repository's folders that install as attnserve.<name> (pyproject.toml's and demo/pyproject.toml's
# package-dir)
MAPPED = {"client", "service", "export", "models", "demo"}


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return set(out.stdout.split())


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, zipfile.ZipFile]:
    """attnserve's and attnserve-demo's wheels, built from a copy of the working tree (setuptools leaves
    a build/ folder where it builds)."""
    tmp = tmp_path_factory.mktemp("wheels")
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    source = tmp / "source"
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp),
    ]
    subprocess.run([*pip, str(source), str(source / "demo")], check=True, cwd=tmp)
    return {w.name.split("-")[0]: zipfile.ZipFile(w) for w in tmp.glob("*.whl")}


def requires(wheel: zipfile.ZipFile) -> list[str]:
    """The wheel's Requires-Dist lines."""
    (meta,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    lines = wheel.read(meta).decode().splitlines()
    return [line.split(": ", 1)[1] for line in lines if line.startswith("Requires-Dist: ")]


def test_the_wheels_install_only_the_attnserve_namespace(wheels):
    for wheel in wheels.values():
        top = {n.split("/")[0] for n in wheel.namelist()}
        assert {t for t in top if not t.endswith(".dist-info")} == {"attnserve"}, wheel.filename


def test_attnserve_carries_no_training_code_and_no_weights(wheels):
    names = wheels["attnserve"].namelist()
    packages = {n.split("/")[1] for n in names if n.startswith("attnserve/") and n.count("/") > 1}
    assert packages == {"api", "client", "service", "export", "models"}
    assert not [n for n in names if n.endswith(".pt") or n.split("/")[-1] in ("train.py", "evaluate.py")]


def test_attnserve_carries_the_explorer_page_and_its_files(wheels):
    """Every file of the page the server sends (service/http/explorer/), so an installed server (the
    container's) shows it."""
    names = set(wheels["attnserve"].namelist())
    page = ROOT / "service" / "http" / "explorer"
    shipped = [f for f in page.rglob("*") if f.is_file() and f.suffix in (".html", ".css", ".js", ".png")]
    assert len(shipped) >= 7  # the page, its style and script, four samples
    for f in shipped:
        assert f"attnserve/service/http/explorer/{f.relative_to(page)}" in names, f


def test_attnserve_demo_carries_the_weights_and_their_training(wheels):
    names = set(wheels["attnserve_demo"].namelist())
    assert {n.split("/")[1] for n in names if n.startswith("attnserve/")} == {"demo"}
    assert {"attnserve/demo/train.py", "attnserve/demo/evaluate.py"} <= names
    shipped = {n.split("/")[-1] for n in names if n.startswith("attnserve/demo/weights/")}
    assert shipped == {p.name for p in (ROOT / "demo" / "weights").glob("*.pt")} != set()
    assert requires(wheels["attnserve_demo"]) == ["attnserve[export]==0.1.0"]


def test_the_plain_install_is_the_client_with_light_requirements(wheels):
    """``pip install attnserve`` without extras: what an application needs to call a server, nothing that
    serves or exports (ONNX Runtime, Prometheus, torch come with the extras)."""
    plain = {Requirement(r).name for r in requires(wheels["attnserve"]) if Requirement(r).marker is None}
    assert plain == {"numpy", "pillow", "grpcio", "protobuf"}
    loaded = loaded_after("import attnserve.client")
    third_party = {m.split(".")[0] for m in loaded} & {"onnxruntime", "prometheus_client", "torch", "onnx"}
    assert not third_party


def test_a_command_whose_extra_is_missing_says_which_to_install(tmp_path):
    """ONNX Runtime made unimportable, as in the plain install: ``attnserve serve`` names the extra
    instead of a traceback."""
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"  # an import of it now raises ModuleNotFoundError
        f"from attnserve.cli import main; sys.exit(main(['serve', '--repository', {str(tmp_path)!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 2, out.stderr
    assert "lacks the 'onnxruntime' package" in out.stderr and "attnserve[server]" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_module_imports_the_folders_by_their_bare_names():
    """``models``, ``service``… are generic names other projects use too (onnxruntime ships a
    ``models`` namespace); the code imports them only as ``attnserve.models``, ``attnserve.service``…"""
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    bare = []
    for path in tracked.stdout.split():
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bare += [f"{path}: {n}" for n in names if n.split(".")[0] in MAPPED]
    assert not bare


@pytest.mark.parametrize(
    "entry",
    [
        "import attnserve.service.server, attnserve.service.cli",  # what `attnserve serve` loads
        "import attnserve.client.predict",  # `attnserve predict`
        "from attnserve.cli import main; main(['--help'])",  # the command list
    ],
)
def test_serving_and_client_entry_points_load_neither_torch_nor_the_exporter(entry):
    loaded = loaded_after(entry)
    assert "torch" not in loaded
    assert not {m for m in loaded if m.startswith(("attnserve.export", "attnserve.models"))}


def test_the_client_depends_on_the_generated_api_and_the_map_vocabulary_only():
    loaded = loaded_after("import attnserve.client.predict")
    assert "attnserve.api.v1.vision_pb2" in loaded
    ours = {m for m in loaded if m.startswith("attnserve.")}
    assert {m.split(".")[1] for m in ours} <= {"api", "client", "maps"}, sorted(ours)
