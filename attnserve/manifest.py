"""The model repository's manifest: what the exporter writes beside each ``model.onnx`` and the server reads.

Layout: ``REPOSITORY/NAME/VERSION/{model.onnx, manifest.json}``. The same facts are stored in the ONNX
file's metadata under ``attnserve.manifest``, less the sha256 (which is of the file itself).
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# NAME/config.toml, beside the version folders: the model's serving settings (service.settings.ModelSettings)
MODEL_CONFIG_FILE = "config.toml"
METADATA_KEY = "attnserve.manifest"

CLASSIFICATION = "classification"
DETECTION = "detection"
TASKS = (CLASSIFICATION, DETECTION)

# What each task's prediction outputs are called in the graph, in order.
PREDICTION_OUTPUTS = {
    CLASSIFICATION: ("logits", "probabilities"),
    DETECTION: ("boxes", "scores", "classes"),  # boxes: x1, y1, x2, y2 in input pixels
}

PRECISIONS = ("fp32", "fp16", "int8")


def model_dirs(repository: Path) -> list[Path]:
    """The repository's NAME folders, by name; hidden ones (an export's staging folder) skipped."""
    return sorted(p for p in Path(repository).iterdir() if p.is_dir() and not p.name.startswith("."))


def version_numbers(model_dir: Path) -> list[int]:
    """One model's VERSION folders (whole numbers), ascending; none if it has no folder."""
    if not Path(model_dir).is_dir():
        return []
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit())


@dataclass
class InputSpec:
    """The model's one input: N×3×H×W float32 RGB in [0, 1]; any normalisation happens inside the graph."""

    name: str
    height: int
    width: int
    resize: str  # how an image of another size is fitted: see attnserve.imaging.RESIZE_POLICIES
    mean: list[float]  # the normalisation the graph applies: (x - mean) / std per channel
    std: list[float]
    layout: str = "NCHW"
    color: str = "RGB"
    dtype: str = "float32"
    value_range: list[float] = field(default_factory=lambda: [0.0, 1.0])


@dataclass
class AttentionOutput:
    name: str  # the ONNX output name
    kind: str  # one of attnserve.maps.MAP_KINDS
    source: str  # the PyTorch module that computes it, as in named_modules()
    origin: str  # "declared" by the model, or "discovered" in the graph
    shape: list[int]  # at batch 1 and the model's input size
    stride: float | None = None  # input pixels per map cell; None for channel maps
    grid: list[int] | None = None  # [h, w] cells at the input size; None for channel maps


@dataclass
class Manifest:
    name: str
    version: int
    task: str
    labels: list[str]
    input: InputSpec
    predictions: list[str]
    attention: list[AttentionOutput]
    precision: str
    opset: int
    exporter: str  # which torch exporter produced the graph: "torch.export" or "torchscript"
    source: dict  # where the model came from: arch or factory, checkpoint, weights
    versions: dict  # library versions at export time
    verification: dict  # parity and quantisation figures
    sha256: str = ""  # of model.onnx; empty inside the ONNX metadata itself
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        if data.get("schema") != SCHEMA:
            raise ValueError(f"manifest schema {data.get('schema')!r} is not {SCHEMA}; re-export the model")
        data = dict(data)
        data["input"] = InputSpec(**data["input"])
        data["attention"] = [AttentionOutput(**a) for a in data["attention"]]
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def label(self, class_id: int) -> str:
        """The class's name; ``class_<id>`` for an index the labels do not cover."""
        c = int(class_id)
        return self.labels[c] if 0 <= c < len(self.labels) else f"class_{c}"

    def output_names(self) -> list[str]:
        return [*self.predictions, *(a.name for a in self.attention)]
