"""The attnserve server: a model repository served over gRPC with ONNX Runtime. Never imports torch."""
