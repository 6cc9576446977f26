"""Coverage-guided fuzzing (atheris) of what clients send: image bytes, and both gRPC APIs' requests.

Run with ``python -m fuzz HARNESS`` (see fuzz/README.md); the harnesses' ``check`` functions are also
called directly by tests/test_fuzz.py for the committed crash inputs in fuzz/regressions/.
"""
