"""Which model versions are served, and changing that while serving without failing a call.

Three modes (``model_control``):

- static: the repository as found at start-up; load and unload calls are refused.
- poll: the repository is read again every ``poll_interval_s``: new versions load, removed ones are
  retired, a version whose files changed or a model whose config.toml changed is reloaded. Load and
  unload calls are refused (the folder is the truth; a call would be undone by the next read).
- explicit: the repository as found at start-up; then only load and unload calls change what is served.

Which versions (``version_policy``, server-wide or in NAME/config.toml): all, latest:N or specific:V,...
For latest:N the N newest versions *that load* are served, so a new version that fails leaves the one
before it serving.

A version loads only once complete: its manifest.json reads and model.onnx's sha256 is the manifest's
(checked on the very bytes the session loads). The exporter writes a version atomically; for copies made
by other tools (rsync, kubectl cp, an object-storage sync) the digest is the marker, since a half-copied
or corrupt file never matches. A version that fails is reported (the log, attnserve_model_load_failures,
attnserve_model_load_failed, RepositoryIndex's reason) and not tried again until its files change.

A swap: the new version loads and warms up on a thread while the old one serves, then joins the registry
(requests without a version get it from then on); a version no longer wanted leaves the registry, so no
new request reaches it, and once every request admitted to it is answered (at most ``grace_period_s``)
its batcher, threads and session are released.
"""

import asyncio
import contextlib
import ctypes
import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from attnserve.manifest import CLASSIFICATION, MODEL_CONFIG_FILE, model_dirs, version_numbers
from attnserve.service.errors import ServiceError, not_found
from attnserve.service.messages import RepositoryEntry
from attnserve.service.metrics import Metrics
from attnserve.service.readiness import Readiness
from attnserve.service.registry import (
    CONFIG,
    INCOMPLETE,
    LOAD_FAILURE_REASONS,
    LoadError,
    ModelRegistry,
    ServedModel,
    load_version,
    read_digests,
)
from attnserve.service.settings import EXPLICIT, POLL, STATIC, ModelSettings, Settings

log = logging.getLogger(__name__)

Files = tuple[tuple[str, int, int], ...]  # (name, size, mtime_ns) of each file of a folder, by name


def files_of(folder: Path, only: str | None = None) -> Files:
    """What tells a folder's files (or its file ``only``) changed: names, sizes and modification times."""
    found = []
    with contextlib.suppress(OSError):  # a folder that vanished has no files
        for path in sorted(folder.iterdir()) if only is None else [folder / only]:
            with contextlib.suppress(OSError):
                st = path.stat()
                if path.is_file():
                    found.append((path.name, st.st_size, st.st_mtime_ns))
    return tuple(found)


@dataclass
class _Model:
    """A model folder as read: each version's files, and its config.toml's."""

    versions: dict[int, Files]
    config: Files


@dataclass
class _Failure:
    files: Files  # the version's files, and its model's config.toml, when it failed: tried again once
    config: Files  # either changes
    reason: str
    message: str


def _of_model(keys: dict[str, object], name: str) -> list[str]:
    """The NAME/VERSION keys of model ``name`` (a list: the caller may delete them)."""
    return [key for key in keys if key.split("/")[0] == name]


def _read_model(model_dir: Path) -> _Model:
    try:
        versions = {v: files_of(model_dir / str(v)) for v in version_numbers(model_dir)}
    except OSError:
        versions = {}
    return _Model(versions, files_of(model_dir, MODEL_CONFIG_FILE))


class ModelLifecycle:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, metrics: Metrics, readiness: Readiness
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.readiness = readiness
        self.repository = Path(settings.repository)
        self._trusted: dict[str, str] | None = None
        self._lock = asyncio.Lock()  # one change of what is served at a time
        self._failures: dict[str, _Failure] = {}  # NAME/VERSION → why it is not served
        self._left_out: dict[str, str] = {}  # NAME/VERSION that would load, but is not served: why
        self._configs: dict[str, Files] = {}  # each served model's config.toml, as applied
        self._bad_configs: dict[str, Files] = {}  # config.toml files found invalid, as they were
        self._unloaded: set[str] = set()  # explicit: models unloaded by a call, until loaded again
        self._poller: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()

    @property
    def failures(self) -> dict[str, str]:
        """NAME/VERSION → why it failed to load, for the versions in the repository that did."""
        return {key: f.message for key, f in sorted(self._failures.items())}

    async def start(self) -> None:
        """Load the repository (each version ready as soon as it is warm), then, with poll, watch it."""
        if self.settings.model_digests:
            self._trusted = read_digests(Path(self.settings.model_digests))
        await self.reconcile()
        if self.settings.model_control == POLL:
            self._poller = asyncio.create_task(self._poll(), name="repository-poll")

    async def stop(self) -> None:
        """Stop watching; wait for the versions being retired to be released."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def reconcile(self, only: str | None = None) -> None:
        """Make what is served what the repository and the version policies say (``only``: one model)."""
        async with self._lock:
            names = [only] if only is not None else await asyncio.to_thread(self._names)
            for name in names:
                if name not in self._unloaded:
                    await self._reconcile_model(name)

    async def load(self, name: str) -> list[int]:
        """Explicit mode (the data plane checks it, and the caller): (re)load ``name`` from the
        repository, failed versions tried again."""
        if name not in await asyncio.to_thread(self._names_on_disk):
            raise not_found(f"model {name!r} is not in the repository {self.repository}")
        self._unloaded.discard(name)
        for key in _of_model(self._failures, name):
            del self._failures[key]
        await self.reconcile(name)
        versions = self.registry.versions(name)
        if not versions:
            why = "; ".join(self._failures[key].message for key in _of_model(self._failures, name))
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model {name!r}: no version could be loaded ({why or 'it has no version folder'})",
            )
        return versions

    async def unload(self, name: str) -> list[int]:
        """Explicit mode: stop serving ``name``; returns once the calls it had are answered."""
        async with self._lock:
            served = self.registry.served(name)
            if not served:
                raise not_found(
                    f"model {name!r} is not served here (models: {', '.join(self.registry.names())})"
                )
            self._unloaded.add(name)
            retiring = [self._retire(s, "unloaded") for s in served.values()]
        await asyncio.gather(*retiring)
        return sorted(served)

    def unserved(self) -> list[RepositoryEntry]:
        """The versions in the repository that are not served, each with why."""
        entries = []
        for key, reason in [*((k, f.message) for k, f in self._failures.items()), *self._left_out.items()]:
            name, version = key.split("/")
            if int(version) not in self.registry.versions(name):  # not one whose new files fail
                entries.append(RepositoryEntry(name, int(version), False, reason))
        return entries

    def check_mode(self, call: str) -> None:
        mode = self.settings.model_control
        if mode == EXPLICIT:
            return
        how = {
            STATIC: "it serves the repository as found at start-up: export into it and restart (or roll) the "
            "server, or run it with model_control poll or explicit",
            POLL: "it follows the repository: add or remove a version folder, and it is loaded or retired "
            f"within poll_interval_s ({self.settings.poll_interval_s:g} s)",
        }[mode]
        raise ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"this server's model_control is {mode}, so it takes no {call} calls: {how}",
        )

    def _names_on_disk(self) -> list[str]:
        return [d.name for d in model_dirs(self.repository)]

    def _names(self) -> list[str]:
        """The models to look at: those in the repository and those served (one removed is retired)."""
        try:
            on_disk = self._names_on_disk()
        except OSError as exc:  # the volume went away: keep serving what is loaded rather than nothing
            log.error("cannot read the model repository %s: %s; serving what is loaded", self.repository, exc)
            return []
        return sorted({*on_disk, *self.registry.names()})

    async def _reconcile_model(self, name: str) -> None:
        model_dir = self.repository / name
        found = await asyncio.to_thread(_read_model, model_dir)
        served = self.registry.served(name)
        try:
            policy = ModelSettings.load(self.settings, model_dir, CLASSIFICATION).versions
        except ValueError as exc:  # serve on as before; versions not served yet cannot load with it
            report = self._bad_configs.get(name) != found.config  # once per change of the file
            self._bad_configs[name] = found.config
            if report and served:
                log.error("model %s: %s; serving on with the settings it had", name, exc)
                self.metrics.load_failures.labels(name, CONFIG).inc()
            for version, files in found.versions.items():
                if version not in served:
                    error = LoadError(CONFIG, str(exc))
                    self._fail(f"{name}/{version}", files, found.config, error, report and not served)
            return
        self._bad_configs.pop(name, None)
        if served and self._configs.get(name) != found.config:
            served = self._apply_config(model_dir, served)
        kept: list[ServedModel] = []
        for version in policy.candidates(list(found.versions)):
            if policy.count is not None and len(kept) == policy.count:
                break
            files, current = found.versions[version], served.get(version)
            if current is not None and current.files == files:
                kept.append(current)
                continue
            failure = self._failures.get(f"{name}/{version}")
            if failure is not None and (failure.files, failure.config) == (files, found.config):
                if current is not None:
                    kept.append(current)  # its files changed into ones that fail: the loaded one serves on
                continue
            loaded = await self._load(model_dir / str(version), files, found.config)
            if loaded is None:
                if current is not None:
                    kept.append(current)
                continue
            self.registry.add(loaded)
            if current is not None:
                self._retire(current, "replaced", gone=False)
            kept.append(loaded)
        for served_model in served.values():
            if (
                not any(served_model is k for k in kept)
                and self.registry.served(name).get(served_model.manifest.version) is served_model
            ):
                self._retire(served_model, "left out by version_policy or removed from the repository")
        self._configs[name] = found.config
        for key in _of_model(self._failures, name):
            if int(key.split("/")[1]) not in found.versions:
                del self._failures[key]
                self.metrics.load_failed.labels(*key.split("/")).set(0)
        served_now = self.registry.versions(name)
        for key in _of_model(self._left_out, name):
            del self._left_out[key]
        for version in found.versions:
            key = f"{name}/{version}"
            if version not in served_now and key not in self._failures:
                self._left_out[key] = f"not served: version_policy is {policy}"
        self.metrics.version_served.labels(name).set(max(served_now, default=0))
        if served_now:
            self.readiness.model_loaded(name)

    def _apply_config(self, model_dir: Path, served: dict[int, ServedModel]) -> dict[int, ServedModel]:
        """The served versions under the model's changed config.toml, their sessions kept."""
        swapped = {}
        for version, old in served.items():
            # valid: the file was just read for the version policy (the task changes only a default)
            settings = ModelSettings.load(self.settings, model_dir, old.manifest.task)
            new = old.with_settings(settings, self.metrics)
            self.registry.add(new)
            self._retire(old, "config.toml changed", gone=False)
            log.info("model %s: config.toml changed, now %s", old.key, settings)
            swapped[version] = new
        return swapped

    async def _load(self, version_dir: Path, files: Files, config: Files) -> ServedModel | None:
        key = f"{version_dir.parent.name}/{version_dir.name}"
        try:
            served = await asyncio.to_thread(
                load_version,
                self.settings,
                version_dir,
                self._trusted,
                self.metrics,
                files,
                self.settings.model_control != STATIC,
            )
        except LoadError as exc:
            self._fail(key, files, config, exc)
            return None
        self._failures.pop(key, None)
        m, model = served.manifest, served.model
        labels = (m.name, str(m.version))
        self.metrics.load_failed.labels(*labels).set(0)
        self.metrics.loads.labels(m.name).inc()
        # each model's series exist from its first load, at 0, so that increase() sees the first event
        self.metrics.unloads.labels(m.name)
        self.metrics.unload_seconds.labels(m.name)
        for reason in LOAD_FAILURE_REASONS:
            self.metrics.load_failures.labels(m.name, reason)
        self.metrics.load_seconds.labels(*labels).set(model.load_seconds)
        self.metrics.model_info.labels(*labels, m.task, model.provider, m.precision).set(1)
        self.metrics.model_ready.labels(*labels).set(1)
        log.info("loaded %s on %s in %.2f s", key, model.provider, model.load_seconds)
        if any(name == MODEL_CONFIG_FILE for name, *_ in config):
            log.info("model %s: %s", key, served.settings)
        for warning in model.warnings:
            log.warning("model %s: %s", key, warning)
        return served

    def _fail(self, key: str, files: Files, config: Files, exc: LoadError, report: bool = True) -> None:
        """Record why ``key`` is not served; ``report``: log and count it (once per change of its files)."""
        self._failures[key] = _Failure(files, config, exc.reason, str(exc))
        name, version = key.split("/")
        self.metrics.load_failed.labels(name, version).set(1)
        if int(version) not in self.registry.versions(name):
            self.metrics.model_ready.labels(name, version).set(0)
        if not report:
            return
        # a version still being copied is expected to be incomplete for a while: not an error yet
        log.log(
            logging.WARNING if exc.reason == INCOMPLETE else logging.ERROR,
            "model %s not loaded: %s",
            key,
            exc,
        )
        self.metrics.load_failures.labels(name, exc.reason).inc()

    def _retire(self, served: ServedModel, why: str, gone: bool = True) -> asyncio.Task:
        """Take ``served`` out of the registry now and release it once its calls are answered; ``gone``:
        its version is no longer served at all (not replaced by itself under other settings)."""
        self.registry.remove(served)
        m = served.manifest
        if gone and m.version not in self.registry.versions(m.name):
            labels = (m.name, str(m.version))
            self.metrics.model_ready.labels(*labels).set(0)
            self.metrics.model_info.labels(*labels, m.task, served.model.provider, m.precision).set(0)
            if not self.registry.versions(m.name):
                self.readiness.model_unloaded(m.name)
                self.metrics.version_served.labels(m.name).set(0)
        task = asyncio.create_task(self._release(served, why, gone), name=f"retire-{served.key}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

    async def _release(self, served: ServedModel, why: str, gone: bool) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.grace_period_s
        while served.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if served.in_flight:
            log.warning(
                "%s: %d calls still in flight after %.1f s; releasing it",
                served.key,
                served.in_flight,
                self.settings.grace_period_s,
            )
        await served.batcher.close()
        served.lane.pool.shutdown(wait=False)
        key, name = served.key, served.manifest.name
        del served
        if gone:
            release_memory()
            self.metrics.unloads.labels(name).inc()
            self.metrics.unload_seconds.labels(name).observe(loop.time() - started)
            log.info("retired %s (%s) after %.2f s", key, why, loop.time() - started)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.reconcile()
            except Exception:  # a bug here must not stop the polling, nor the serving
                log.exception("reading the model repository failed; serving what is loaded")


def release_memory() -> None:
    """Give a released model's memory back: a full collection (what loading made was frozen out of the
    collector's sight, service/server.py) and glibc's free lists returned to the system."""
    frozen = gc.get_freeze_count() > 0
    gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
