"""Generated from protos/attnserve/api/v1/vision.proto by `make protos`; do not edit."""
