"""Writing into a model repository (``DIR/NAME/VERSION/{model.onnx, manifest.json}``), atomically: a version
folder appears complete or not at all. Work happens in a hidden folder beside it, renamed into place."""

import os
import shutil
import tempfile
from pathlib import Path

from attnserve.export.errors import ExportError
from attnserve.manifest import MANIFEST_FILE, MODEL_FILE, version_numbers


def versions(repository: Path, name: str) -> list[int]:
    return version_numbers(Path(repository) / name)


def next_version(repository: Path, name: str) -> int:
    existing = versions(repository, name)
    return existing[-1] + 1 if existing else 1


def check_free(repository: Path, name: str, version: int, overwrite: bool) -> None:
    """Fail before any work when the version exists: an export takes a while."""
    if (Path(repository) / name / str(version)).exists() and not overwrite:
        raise ExportError(
            f"{Path(repository) / name / str(version)} already exists. Pass another --version, leave "
            "--version out to take the next free one, or pass --overwrite to replace it."
        )


def write_version(
    repository: Path, name: str, version: int, model: bytes, manifest_json: str, overwrite: bool = False
) -> Path:
    check_free(repository, name, version, overwrite)
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(version)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=model_dir))
    # mkdtemp makes the folder private (0700): give it a normal folder's mode, so a server running as
    # another user (the container's uid 10001) can read the version
    os.chmod(staging, 0o777 & ~_umask())
    try:
        _write_synced(staging / MODEL_FILE, model)
        _write_synced(staging / MANIFEST_FILE, manifest_json.encode())
        if target.exists():  # --overwrite: move the old version aside, then swap
            retired = Path(tempfile.mkdtemp(prefix=f".{version}.retired-", dir=model_dir))
            os.replace(target, retired / "old")
            os.replace(staging, target)
            shutil.rmtree(retired)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
