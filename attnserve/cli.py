"""The ``attnserve`` command. Its subcommands are entry points in the ``attnserve.commands`` group, each
registered by the layer that implements it (pyproject.toml): this torch-free core names none of them and
imports only the one asked for, so ``serve`` and ``predict`` never load the exporter or torch."""

import ast
import importlib.util
import os
import signal
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

GROUP = "attnserve.commands"
# pyproject.toml's extras: the plain install is the client; a command may need one of these
EXTRAS = "pip install 'attnserve[server]' to serve (or [gpu]), 'attnserve[export]' to export and import."


def commands() -> dict[str, EntryPoint]:
    return {e.name: e for e in sorted(entry_points(group=GROUP), key=lambda e: e.name)}


def summary(entry: EntryPoint) -> str:
    """The first line of the command module's docstring, read from its source without importing it (or
    its package: finding the package's spec imports only the packages above it)."""
    package, _, leaf = entry.module.rpartition(".")
    spec = importlib.util.find_spec(package)
    sources = [Path(p) / f"{leaf}.py" for p in (spec.submodule_search_locations or [])] if spec else []
    source = next((s for s in sources if s.is_file()), None)
    if source is None:
        return ""
    doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    return first.split(": ", 1)[1] if first.startswith("``attnserve") and ": " in first else first


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = commands()
    if not argv or argv[0] not in available:
        lines = [f"  {name:8} {summary(entry)}" for name, entry in available.items()]
        print(
            "usage: attnserve COMMAND [options]   (attnserve COMMAND --help)\n\n" + "\n".join(lines),
            file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout,
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        status = available[argv[0]].load()(argv[1:])
        sys.stdout.flush()  # here, so a closed pipe is found inside the try and not at exit
        return status
    except ModuleNotFoundError as e:
        if (e.name or "attnserve").split(".")[0] == "attnserve":
            raise  # our own module missing is a broken install, not a missing extra
        print(f"attnserve {argv[0]}: this install lacks the {e.name!r} package; {EXTRAS}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`attnserve predict ... | head`): stop quietly, as Unix tools do; stdout
        # goes to devnull so Python's own flush at exit cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
