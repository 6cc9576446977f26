"""``attnserve serve``: the server, with its settings from flags, environment and a TOML file."""

import argparse
import asyncio
import logging
import sys

from attnserve.service import settings as settings_module


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="attnserve serve", description="Serve a model repository over gRPC."
    )
    settings_module.add_arguments(parser)
    try:
        settings = settings_module.load(parser.parse_args(argv))
    except (ValueError, OSError) as exc:
        print(f"attnserve serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from attnserve.service import supervisor  # the server's imports, only when serving

    workers = supervisor.worker_count(settings)
    if workers > 1:
        return supervisor.supervise(settings, workers)
    from attnserve.service.server import serve as run_server

    return asyncio.run(run_server(supervisor.worker_settings(settings, 1)))
