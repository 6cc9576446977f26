"""Export stage: any attention model, ours or a user's, to a verified ONNX model in a model repository,
with its attention maps as named graph outputs. Entry points: ``attnserve export`` (cli.py) and
``attnserve import`` (import_cli.py)."""
