"""The Open Inference Protocol (KServe V2) over gRPC."""
