"""The wire APIs, generated from protos/attnserve/api/ by `make protos`; nothing here is hand-written
but the package docstrings. ``v1``: attnserve's vision API (package ``attnserve.v1``); ``inference.v2``:
the Open Inference Protocol (KServe V2, package ``inference``)."""
