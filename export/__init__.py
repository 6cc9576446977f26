"""Export stage: any attention model, ours or a user's, to a verified ONNX model in a model repository,
with its attention maps as named graph outputs. Entry point: ``attnserve export`` (export.cli)."""

import attnserve  # noqa: F401 - first, so ONNX Runtime's telemetry is off before it is imported
