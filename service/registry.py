"""The models being served: each version as loaded with its model's settings, by name and version; and
loading one version (the lifecycle, service/lifecycle.py, decides which)."""

from dataclasses import dataclass, field
from pathlib import Path

from attnserve.manifest import MANIFEST_FILE, MODEL_FILE, Manifest
from attnserve.service.errors import not_found
from attnserve.service.lanes import Lane
from attnserve.service.metrics import Metrics
from attnserve.service.settings import ModelSettings, Settings
from attnserve.service.stages.batch import Batcher
from attnserve.service.stages.postprocess import TaskHandler, task_handler
from attnserve.service.stages.run import DigestMismatch, OnnxModel


@dataclass(eq=False)
class ServedModel:
    model: OnnxModel
    settings: ModelSettings
    batcher: Batcher
    handler: TaskHandler  # the postprocess stage, with the model's defaults
    lane: Lane  # its threads for decoding, fitting and encoding
    files: tuple = ()  # the version folder's files as loaded (lifecycle.files_of)
    in_flight: int = field(default=0)  # requests admitted to it and not answered yet (event loop only)

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest

    @property
    def key(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    def with_settings(self, settings: ModelSettings, metrics: Metrics) -> "ServedModel":
        """The same loaded model under other settings (its config.toml changed): new batcher, handler and
        lane, the session shared."""
        return serve_model(self.model, settings, metrics, self.files, self.lane.threads)


def serve_model(
    model: OnnxModel, settings: ModelSettings, metrics: Metrics, files: tuple, decode_threads: int
) -> ServedModel:
    batcher = Batcher(
        model,
        settings.max_batch_size,
        settings.max_queue_delay_ms / 1000,
        settings.max_queue_size,
        metrics,
        settings.instance_count,
    )
    lane = Lane(decode_threads, f"decode-{model.manifest.name}-{model.manifest.version}")
    return ServedModel(model, settings, batcher, task_handler(model.manifest, settings), lane, files)


# why a version did not load (attnserve_model_load_failures' reason label)
INCOMPLETE, DIGEST, UNTRUSTED, CONFIG, INVALID = "incomplete", "digest", "untrusted", "config", "invalid"
LOAD_FAILURE_REASONS = (INCOMPLETE, DIGEST, UNTRUSTED, CONFIG, INVALID)


class LoadError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def load_version(
    settings: Settings,
    version_dir: Path,
    trusted: dict[str, str] | None,
    metrics: Metrics,
    files: tuple,
    need_digest: bool,
) -> ServedModel:
    """Load and warm up one version with its model's settings (the server's under NAME/config.toml's),
    or LoadError saying why it cannot be served. ``need_digest``: a manifest without the model file's
    sha256 is incomplete (while serving, the digest is what tells a finished copy). Blocking: run it on
    a thread."""
    key = f"{version_dir.parent.name}/{version_dir.name}"
    try:
        manifest = Manifest.read(version_dir / MANIFEST_FILE)
        (version_dir / MODEL_FILE).stat()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LoadError(INCOMPLETE, f"{key} is incomplete: {exc}") from None
    if need_digest and not manifest.sha256:
        raise LoadError(
            INCOMPLETE, f"{key}: its {MANIFEST_FILE} has no sha256 of {MODEL_FILE}; export it again"
        )
    digest = None
    if trusted is not None:
        digest = trusted.get(f"{key}/{MODEL_FILE}")
        if digest is None:
            raise LoadError(UNTRUSTED, f"{key}/{MODEL_FILE} is not in model_digests {settings.model_digests}")
    try:
        model_settings = ModelSettings.load(settings, version_dir.parent, manifest.task)
    except ValueError as exc:
        raise LoadError(CONFIG, str(exc)) from None
    try:
        model = OnnxModel(
            version_dir, settings.provider, settings.intra_op_threads, settings.inter_op_threads, digest
        )
    except DigestMismatch as exc:  # first: model_digests' verdict is the one that matters
        raise LoadError(UNTRUSTED if exc.trusted else DIGEST, str(exc)) from None
    except Exception as exc:  # ONNX Runtime's own errors for a file that is no model it can run
        raise LoadError(INVALID, f"{key}: {exc}") from None
    m = model.manifest
    if (m.name, str(m.version)) != (version_dir.parent.name, version_dir.name):
        raise LoadError(  # the registry serves it by what its manifest says
            INVALID,
            f"{key}: its {MANIFEST_FILE} is for {m.name}/{m.version} (a copied folder?); "
            "export the model with --name and --version instead",
        )
    try:
        model.warm_up(model_settings.max_batch_size)
    except Exception as exc:
        raise LoadError(INVALID, f"{key}: {exc}") from None
    return serve_model(model, model_settings, metrics, files, settings.decode_threads)


class ModelRegistry:
    """What is served now. Changed only on the event loop (by the lifecycle), so a request sees one
    consistent set: the versions it can reach are those here at the moment it arrives."""

    def __init__(self) -> None:
        self._models: dict[str, dict[int, ServedModel]] = {}

    def add(self, served: ServedModel) -> None:
        """Serve ``served``, in place of the same version if it was served."""
        self._models.setdefault(served.manifest.name, {})[served.manifest.version] = served

    def remove(self, served: ServedModel) -> None:
        """Stop routing requests to ``served`` (those admitted to it go on)."""
        versions = self._models.get(served.manifest.name, {})
        if versions.get(served.manifest.version) is served:
            del versions[served.manifest.version]
            if not versions:
                del self._models[served.manifest.name]

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

    def served(self, name: str) -> dict[int, ServedModel]:
        return dict(self._models.get(name, {}))

    def all(self) -> list[ServedModel]:
        return [v for name in self.names() for _, v in sorted(self._models[name].items())]

    def get(self, name: str, version: int = 0) -> ServedModel:
        if name not in self._models:
            known = ", ".join(self.names()) or "none"
            raise not_found(f"model {name!r} is not served here (models: {known})")
        versions = self._models[name]
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise not_found(
                f"model {name!r} has no version {version} (versions: {', '.join(map(str, sorted(versions)))})"
            )
        return versions[version]


def read_digests(path: Path) -> dict[str, str]:
    """``sha256sum`` output made in the repository folder (``sha256sum */*/model.onnx``): model path
    relative to the repository → hex digest. ValueError naming the line when it is not that."""
    digests = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.removeprefix("./")
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest) or not name:
            raise ValueError(f"{path} line {number}: expected sha256sum's 'HEX  NAME/VERSION/{MODEL_FILE}'")
        digests[name] = digest
    return digests
