"""Debian's Prometheus, on loopback, scraping one target every second: for tests that query what a real
Prometheus makes of the server's metrics."""

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def scraping(target: str, work: Path) -> Iterator[Callable[[str], list[dict]]]:
    """Prometheus scraping ``target`` (host:port of a /metrics), up once this yields; it yields
    ``query(promql)``, the instant query's results."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "make test installs Debian's prometheus package (promtool, prometheus)"
    web = free_port()
    config = work / "prometheus.yml"
    scrape = {"job_name": "attnserve", "static_configs": [{"targets": [target]}]}
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape]}))
    command = [
        prometheus,
        f"--config.file={config}",
        f"--web.listen-address=127.0.0.1:{web}",
        f"--storage.tsdb.path={work / 'tsdb'}",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{web}/api/v1"

    def query(promql: str) -> list[dict]:
        answer = get(f"{api}/query?query={urllib.parse.quote(promql)}")
        return json.loads(answer)["data"]["result"] if answer else []

    try:
        wait_for(lambda: '"health":"up"' in get(f"{api}/targets"), 30)
        yield query
    finally:
        process.terminate()
        process.wait(10)


def get(url: str) -> str:
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return ""


def wait_for(condition: Callable[[], T], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not true within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
