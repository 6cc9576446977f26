"""The attnserve server: a model repository served over gRPC with ONNX Runtime. Never imports torch."""

import attnserve  # noqa: F401 - first, so ONNX Runtime's telemetry is off before it is imported
