"""The lock (requirements/*.txt, written by `make lock`) against pyproject.toml and the installed
environment: a dependency changed in one place and not the other fails here, not on a user's machine."""

import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# each lock file and the extras it holds; dev.txt is the whole environment, the others subsets of it
LAYERS = {
    "dev.txt": ["server", "export", "dev"],
    "serve.txt": ["server"],
    "export.txt": ["server", "export"],
    "gpu.txt": ["gpu"],
}
# `make test-latest` runs the suite on the newest releases pyproject.toml allows, not on the lock
UNLOCKED = os.environ.get("ATTNSERVE_UNLOCKED") == "1"


def pins(layer: str) -> dict[str, Version]:
    """``name==version`` lines of a pip-compile output (hashes and comments skipped)."""
    found = {}
    for line in (ROOT / "requirements" / layer).read_text().splitlines():
        if "==" in line and not line.lstrip().startswith(("#", "--")):
            name, _, version = line.split(" ")[0].partition("==")
            found[canonicalize_name(name)] = Version(version)
    return found


def requirements(extras: list[str]) -> list[Requirement]:
    """What pyproject.toml asks for with ``extras``, build requirements included (the lock pins those too)."""
    project = PYPROJECT["project"]
    lines = [*project["dependencies"], *PYPROJECT["build-system"]["requires"]]
    lines += [line for extra in extras for line in project["optional-dependencies"][extra]]
    return [r for r in map(Requirement, lines) if r.marker is None or r.marker.evaluate()]


@pytest.mark.parametrize("layer", LAYERS)
def test_the_lock_pins_a_release_pyproject_allows_for_every_requirement(layer):
    pinned = pins(layer)
    for req in requirements(LAYERS[layer]):
        name = canonicalize_name(req.name)
        assert name in pinned, f"pyproject.toml asks for {req}, requirements/{layer} has none: run make lock"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"requirements/{layer} pins {name}=={pinned[name]}, which pyproject.toml's {req} excludes: "
            "run make lock"
        )


def test_every_lock_file_pins_as_the_whole_environment_does():
    dev = pins("dev.txt")
    for layer in LAYERS:
        different = {n: (v, dev[n]) for n, v in pins(layer).items() if n in dev and dev[n] != v}
        assert not different, f"requirements/{layer} and dev.txt disagree: {different}; run make lock"
    assert set(pins("serve.txt")) <= set(pins("export.txt")) <= set(dev)
    assert "torch" not in pins("serve.txt") and "torch" not in pins("gpu.txt")  # the serving side
    # both builds of ONNX Runtime install the same module: one would shadow the other
    assert "onnxruntime" not in pins("gpu.txt"), "gpu.txt must not install onnxruntime beside onnxruntime-gpu"


@pytest.mark.skipif(UNLOCKED, reason="make test-latest installs the newest releases, not the lock")
def test_the_environment_is_the_lock():
    wrong = {
        name: (str(version), metadata.version(name))
        for name, version in pins("dev.txt").items()
        if Version(metadata.version(name)) != version
    }
    assert not wrong, f"installed packages differ from requirements/dev.txt (locked, installed): {wrong}"


@pytest.mark.skipif(UNLOCKED, reason="the newest releases may need other packages than the lock's")
def test_the_lock_holds_nothing_pyproject_does_not_need():
    """dev.txt is exactly the closure of pyproject.toml's requirements (each package's own requirements
    read from its installed metadata): a dependency dropped from pyproject.toml leaves no stale pin."""
    needed: set[tuple[str, frozenset]] = set()
    pending = requirements(LAYERS["dev.txt"])
    while pending:
        req = pending.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in needed:
            continue
        needed.add(key)
        for line in metadata.requires(req.name) or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                pending.append(sub)
    closure = {name for name, _ in needed}
    assert set(pins("dev.txt")) == closure, (
        f"only in the lock: {sorted(set(pins('dev.txt')) - closure)}; "
        f"only needed: {sorted(closure - set(pins('dev.txt')))}; run make lock"
    )
