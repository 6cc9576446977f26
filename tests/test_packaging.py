"""One import namespace, layers that point down: what `pip install .` installs, and what each entry
point loads."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the repository's folders that install as attnserve.<name> (pyproject.toml's package-dir)
MAPPED = {"client", "service", "export", "models"}


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


def test_the_wheel_installs_only_the_attnserve_namespace(tmp_path):
    # built from a copy of the working tree: setuptools leaves a build/ folder where it builds
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.split()
    source = tmp_path / "source"
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("attnserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"attnserve", wheel.name.split("-py3")[0] + ".dist-info"}
    packages = {n.split("/")[1] for n in names if n.startswith("attnserve/") and n.count("/") > 1}
    assert packages == {"api", *MAPPED}
    assert any(n.startswith("attnserve/models/weights/") and n.endswith(".pt") for n in names)


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
