"""Generated from protos/attnserve/v1/vision.proto by `make protos`; do not edit."""
