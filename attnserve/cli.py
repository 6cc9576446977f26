"""The ``attnserve`` command. Each subcommand imports only what it needs: ``export`` needs torch,
the server never does."""

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnserve", description="Serve attention-based vision models.")
    commands = parser.add_subparsers(dest="command", required=True)
    export_parser = commands.add_parser("export", help="export a PyTorch model into a model repository")
    from export.cli import build_parser, run  # torch is imported only for this subcommand

    build_parser(export_parser)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
