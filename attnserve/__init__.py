"""attnserve's torch-free core, shared by the exporter and the server: the model repository's manifest,
image fitting, and the ``attnserve`` command."""

import os

# ONNX Runtime 1.29+ on Linux writes a device id under ~/.cache and uploads usage events unless this
# is set before onnxruntime is imported. A server in a private network must not call out, so it is off
# (an operator's own ORT_DISABLE_TELEMETRY value wins). The server, exporter and benchmarks import
# this package first (their own __init__ does), so it is set before any of them imports onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
