"""Benchmarks: attnserve against raw ONNX Runtime, PyTorch eager and a peer server, in one run
(``python -m bench``, ``make bench``, ``make bench-quick``)."""

import attnserve  # noqa: F401 - first, so ONNX Runtime's telemetry is off before it is imported
