"""The demo models' shipped weights and the code that made them: training on generated scenes
(``python -m attnserve.demo.train``) and their measurement (``python -m attnserve.demo.evaluate``).

A distribution of its own, ``attnserve-demo`` (demo/pyproject.toml), so that neither the serving install
nor the exporter carries training code or weights; ``attnserve export --demo`` needs it installed.
"""

from pathlib import Path

from attnserve.models.zoo import DEMO_MODELS

WEIGHTS_DIR = Path(__file__).parent / "weights"


def demo_checkpoint(name: str) -> Path:
    """The shipped checkpoint of the demo model ``name`` (one of models.zoo.DEMO_MODELS)."""
    if name not in DEMO_MODELS:
        raise KeyError(f"{name!r} is not a demo model; the demo models are {', '.join(DEMO_MODELS)}")
    return WEIGHTS_DIR / f"{name}.pt"
