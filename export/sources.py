"""Where the model to export comes from: one of our architectures, or a user's factory; plus its weights.

Checkpoints load with ``weights_only=True``: tensors and plain containers only, never pickled code.
"""

import hashlib
import importlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from attnserve.export.errors import ExportError
from attnserve.manifest import CLASSIFICATION, DETECTION
from attnserve.models import zoo
from attnserve.models.outputs import OutputSpec
from attnserve.models.scenes import CLASS_NAMES


@dataclass
class SourceModel:
    module: nn.Module  # in eval mode
    task: str
    input_size: tuple[int, int]  # H, W
    labels: list[str] | None
    declared: list[OutputSpec] | None  # our models declare their outputs; a user's model does not
    in_model_normalization: tuple[list[float], list[float]] | None  # (mean, std) the model applies itself
    raw_head: dict | None = None  # our raw-head detectors: export.decode.DecodeSpec's fields
    description: dict = field(default_factory=dict)  # for the manifest's "source"


def from_arch(name: str, checkpoint: Path | None) -> SourceModel:
    """One of our architectures (models.zoo), with a checkpoint's weights, the shipped demo weights, or
    random weights when neither exists."""
    if name not in zoo.ARCH_PRESETS:
        raise ExportError(
            f"unknown architecture {name!r}. Choose one of: {', '.join(sorted(zoo.ARCH_PRESETS))}; "
            "or export your own model with --factory MODULE:CALLABLE."
        )
    config = zoo.ARCH_PRESETS[name]
    shipped = shipped_weights(name) if checkpoint is None else None
    path = checkpoint or shipped
    labels = list(CLASS_NAMES)
    weights = "random"
    payload = None
    if path is not None:
        payload = read_checkpoint(path)
        labels = list(payload.get("class_names") or labels) if isinstance(payload, dict) else labels
        weights = "shipped demo weights" if shipped else "checkpoint"
    module = zoo.build_model(config, tuple(labels))
    if payload is not None:
        load_weights(module, payload, path)
    task = DETECTION if zoo.is_detector(config) else CLASSIFICATION
    normalizer = getattr(module, "backbone", module)  # the CNNs' backbone, or the model (ViT)
    return SourceModel(
        module=module.eval(),
        task=task,
        input_size=(config["input_size"], config["input_size"]),
        labels=labels,
        declared=list(module.output_specs),
        in_model_normalization=([normalizer.INPUT_MEAN] * 3, [normalizer.INPUT_STD] * 3),
        raw_head=getattr(module, "RAW_HEAD", None),
        description={
            "arch": name,
            "config": config,
            **checkpoint_record(path, shown=f"demo/weights/{shipped.name}" if shipped else None),
            "weights": weights,
        },
    )


def shipped_weights(name: str) -> Path | None:
    """The demo model's shipped checkpoint, from the attnserve-demo distribution; None for a preset that
    ships none (it exports with random weights, for benchmarks)."""
    if name not in zoo.DEMO_MODELS:
        return None
    try:
        from attnserve.demo import demo_checkpoint  # imported here: an optional distribution
    except ModuleNotFoundError as e:
        if e.name not in ("attnserve.demo", "attnserve"):
            raise
        raise ExportError(
            f"--arch {name} without --checkpoint takes the shipped demo weights, which come with the "
            "attnserve-demo distribution (pip install ./demo from the repository); or pass --checkpoint FILE."
        ) from None
    return demo_checkpoint(name)


def from_factory(spec: str, kwargs_json: str | None, checkpoint: Path | None) -> nn.Module:
    """``MODULE:CALLABLE`` imported with the current directory on the path, called with the JSON kwargs."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(f"--factory {spec!r} is not MODULE:CALLABLE, e.g. --factory mynets:build_model.")
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as exc:
        raise ExportError(
            f"--factory-kwargs is not valid JSON ({exc}); pass an object like '{{\"classes\": 10}}'."
        ) from None
    if not isinstance(kwargs, dict):
        raise ExportError(
            "--factory-kwargs must be a JSON object of keyword arguments, like '{\"classes\": 10}'."
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        raise ExportError(
            f"could not import {module_name!r} for --factory ({exc}). Run from the folder that holds it, or "
            "add that folder to PYTHONPATH, and check that the module's own imports are installed."
        ) from exc
    except AttributeError:
        raise ExportError(
            f"module {module_name!r} has no {attr!r}; check the name after the colon in --factory."
        ) from None
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ExportError(
            f"calling {spec}(**{kwargs}) failed: {type(exc).__name__}: {exc}. "
            "Check --factory-kwargs against the factory's signature."
        ) from exc
    if not isinstance(model, nn.Module):
        raise ExportError(
            f"{spec} returned a {type(model).__name__}, not a torch.nn.Module; the factory must build and "
            "return the model itself."
        )
    if checkpoint is not None:
        load_weights(model, read_checkpoint(checkpoint), checkpoint)
    return model.eval()


def checkpoint_record(path: Path | None, shown: str | None = None) -> dict:
    """The manifest's note of a checkpoint: its path as given (``shown`` instead, for shipped weights,
    so manifests do not carry this machine's paths) and its sha256."""
    if path is None:
        return {"checkpoint": None}
    return {
        "checkpoint": shown or str(path),
        "checkpoint_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
    }


def read_checkpoint(path: Path) -> dict:
    if not Path(path).is_file():
        raise ExportError(f"checkpoint {str(path)!r} does not exist; pass the path of a saved state dict.")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes; our own error says what is wrong
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(
            f"checkpoint {str(path)!r} could not be read as weights ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}). It must be a file written by torch.save of a state dict "
            "(tensors only): save model.state_dict(), not the model object. Pickled code is never loaded."
        ) from exc
    if not isinstance(payload, dict):
        raise ExportError(f"checkpoint {str(path)!r} holds a {type(payload).__name__}, not a state dict.")
    return payload


def state_dict_of(payload: dict) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a plain state dict, or one under "state_dict" / "model"."""
    for key in ("state_dict", "model"):
        if isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    state = {k: v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, payload: dict, path: Path) -> None:
    state = state_dict_of(payload)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportError(
            f"checkpoint {str(path)!r} does not fit the model: {_listing('missing', missing)}"
            f"{_listing('unexpected', unexpected)}. Build the model with the same architecture and arguments "
            "it was trained with (--arch / --factory-kwargs), or save the state dict of that exact model."
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise ExportError(
            f"checkpoint {str(path)!r} has tensors of the wrong shape: {'; '.join(wrong[:8])}. The model was "
            "built with different sizes than the checkpoint's: check --factory-kwargs or --arch."
        )
    model.load_state_dict(state)


def _listing(what: str, keys: list[str], shown: int = 8) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {what} key(s) ({', '.join(keys[:shown])}{more}); "
