"""Generated from protos/attnserve/api/inference/v2/grpc_predict_v2.proto by `make protos`; do not edit."""
