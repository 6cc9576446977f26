"""The models being served: every version found in the repository, loaded at start-up with its model's
settings."""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from attnserve.manifest import MODEL_CONFIG_FILE, MODEL_FILE, Manifest, model_dirs, version_numbers
from attnserve.service.errors import not_found
from attnserve.service.metrics import Metrics
from attnserve.service.settings import ModelSettings, Settings
from attnserve.service.stages.batch import Batcher
from attnserve.service.stages.postprocess import TaskHandler, task_handler
from attnserve.service.stages.run import OnnxModel

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    model: OnnxModel
    settings: ModelSettings
    batcher: Batcher
    handler: TaskHandler  # the postprocess stage, with the model's defaults

    @property
    def manifest(self) -> Manifest:
        return self.model.manifest


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, dict[int, ServedModel]] = {}
        self.failed: dict[str, str] = {}  # "name/version" → why it did not load

    def add(self, served: ServedModel) -> None:
        self._models.setdefault(served.manifest.name, {})[served.manifest.version] = served

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        return sorted(self._models.get(name, {}))

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


def version_dirs(repository: Path) -> list[Path]:
    """Every NAME/VERSION folder (hidden staging folders skipped); whether it loads is found out later."""
    found = []
    for model_dir in model_dirs(repository):
        try:
            found += [model_dir / str(v) for v in version_numbers(model_dir)]
        except OSError as exc:
            log.error("model %s not loaded: %s", model_dir.name, exc)
    return found


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


def load_repository(
    settings: Settings,
    registry: ModelRegistry,
    metrics: Metrics,
    on_loaded: Callable[[ServedModel], None],
) -> None:
    """Load and warm up every version into ``registry``, each with its model's settings (the server's
    under NAME/config.toml's), batcher and task handler; one that fails is logged and left out.
    ``on_loaded(served)`` runs after each one (the server marks it ready there)."""
    trusted = read_digests(Path(settings.model_digests)) if settings.model_digests else None
    for version_dir in version_dirs(Path(settings.repository)):
        key = f"{version_dir.parent.name}/{version_dir.name}"
        try:
            digest = None
            if trusted is not None:
                digest = trusted.get(f"{key}/{MODEL_FILE}")
                if digest is None:
                    raise RuntimeError(f"{key}/{MODEL_FILE} is not in model_digests {settings.model_digests}")
            model = OnnxModel(
                version_dir, settings.provider, settings.intra_op_threads, settings.inter_op_threads, digest
            )
            model_settings = ModelSettings.load(settings, version_dir.parent, model.manifest.task)
            model.warm_up(model_settings.max_batch_size)
        except Exception as exc:
            log.error("model %s not loaded: %s", key, exc)
            registry.failed[key] = str(exc)
            continue
        batcher = Batcher(
            model,
            model_settings.max_batch_size,
            model_settings.max_queue_delay_ms / 1000,
            model_settings.max_queue_size,
            metrics,
        )
        served = ServedModel(model, model_settings, batcher, task_handler(model.manifest, model_settings))
        registry.add(served)
        log.info("loaded %s on %s in %.2f s", key, model.provider, model.load_seconds)
        if (version_dir.parent / MODEL_CONFIG_FILE).is_file():
            log.info("model %s: %s", key, model_settings)
        for warning in model.warnings:
            log.warning("model %s: %s", key, warning)
        on_loaded(served)
