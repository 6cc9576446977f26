"""Shared fixtures: the demo models exported once per session, and real servers on loopback."""

from pathlib import Path

import pytest

from attnserve.export.cli import main as export_main
from bench.harness import start_server


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("demo_repository")
    assert export_main(["--demo", "--repository", str(repo), "--no-progress"]) == 0
    return repo


@pytest.fixture(scope="session")
def server(demo_repository, tmp_path_factory):
    """One server for the session's tests: batches of up to 8 images gathered over 20 ms."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    server = start_server(
        demo_repository,
        log_path,
        "--max-batch-size",
        "8",
        "--max-queue-delay-ms",
        "20",
        "--max-image-pixels",
        "4000000",
    )
    yield server
    assert server.stop() == 0, server.log()
