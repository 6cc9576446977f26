"""Where a served request's time goes: runs attnserve under load (concurrency 16, JPEGs at the model's
size) and reports how the cores split between the server and the load generator, the server's CPU per
image, and a py-spy profile of the server summarised by thread and by innermost Python function.

    python -m bench.profile cbam_classifier       # after python -m bench has exported the models
"""

import argparse
import collections
import os
import subprocess
import sys
from pathlib import Path

from bench.__main__ import vision
from bench.harness import start_server
from bench.workloads import image_set


def summarise(raw: Path, top: int = 6) -> list[str]:
    """py-spy's raw (collapsed) stacks → share of samples per thread, and per innermost function."""
    threads, leaves = collections.Counter(), collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        threads[thread] += int(count)
        leaves[thread][frames[-1].split(" (")[0]] += int(count)
    total = sum(threads.values()) or 1
    lines = [f"{total} samples"]
    for thread, n in threads.most_common(top):
        inner = ", ".join(f"{f} {c / n:.0%}" for f, c in leaves[thread].most_common(3))
        lines.append(f"  {thread}: {n / total:.0%} of samples ({inner})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--work", type=Path, default=Path(".bench"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--maps", nargs="*", default=[], help="the maps each request asks for (e.g. all)")
    parser.add_argument(
        "--no-py-spy",
        action="store_true",
        help="the load and its CPU figures alone, nothing sampling the server",
    )
    args = parser.parse_args(argv)
    repository = args.work / "repository"
    images = image_set(repository / args.model / "1", 32)
    threads = str(args.threads)
    settings = ["--intra-op-threads", threads, "--decode-threads", threads, "--max-batch-size", "16"]
    server = start_server(
        repository, args.work / "logs" / "profile.log", *settings, "--max-queue-size", "4096"
    )
    raw = args.work / "logs" / "profile.txt"
    py_spy = Path(sys.executable).with_name("py-spy")
    record = [
        "record",
        "--pid",
        str(server.process.pid),
        "--duration",
        str(int(args.seconds)),
        "--rate",
        "200",
    ]
    options = ["--format", "raw", "--threads", "--nonblocking", "--output", str(raw)]
    spy = None
    if not args.no_py_spy:
        spy = subprocess.Popen(
            [str(py_spy), *record, *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    try:
        budget = dict(max_requests=10**6, max_seconds=args.seconds)
        load = vision(server, args.model, images, args.maps, 16, budget)
        if spy is not None:
            spy.wait(60)
    finally:
        server.stop()
    print(
        f"{args.model}, concurrency 16, {load['seconds']:.1f} s: {load['throughput_images_per_s']} images/s"
    )
    print(f"server: {load['server_cores']:.2f} cores, {load['server_cpu_ms_per_image']:.2f} ms CPU per image")
    print(
        f"load generator: {load['client_cores']:.2f} cores, {load['client_cpu_ms_per_image']:.2f} ms CPU "
        "per request"
    )
    if spy is not None:
        print("\n".join(summarise(raw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
