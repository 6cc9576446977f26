"""attnserve's torch-free core, shared by the exporter, the server and the client: the model
repository's manifest and layout, the attention-map vocabulary, image conversion and fitting, the
``attnserve`` command, and the generated API (``attnserve.api``). Every layer is a subpackage of this
one (README: Layout)."""

import os

# ONNX Runtime 1.29+ on Linux writes a device id under ~/.cache and uploads usage events unless this
# is set before onnxruntime is imported. A server in a private network must not call out, so it is off
# (an operator's own ORT_DISABLE_TELEMETRY value wins). The server and the exporter are subpackages,
# so this runs before either imports onnxruntime; the benchmarks import it first themselves.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
