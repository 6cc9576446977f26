"""The ``attnserve`` command. Each subcommand imports only what it needs: ``export`` needs torch, the
server and the client never do."""

import importlib
import os
import signal
import sys

COMMANDS = {
    "serve": ("service.cli", "serve", "serve a model repository over gRPC"),
    "predict": ("service.cli", "predict", "send images to a server; print predictions, write overlays"),
    "export": ("export.cli", "main", "export a PyTorch model into a model repository"),
    "import": ("export.import_cli", "main", "import an ONNX file from any framework into a model repository"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:8} {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print("usage: attnserve COMMAND [options]   (attnserve COMMAND --help)\n\n" + "\n".join(lines),
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)  # fmt: skip
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, function, _ = COMMANDS[argv[0]]
    try:
        status = getattr(importlib.import_module(module), function)(argv[1:])
        sys.stdout.flush()  # here, so a closed pipe is found inside the try and not at exit
        return status
    except BrokenPipeError:
        # the reader went away (`attnserve predict ... | head`): stop quietly, as Unix tools do; stdout
        # goes to devnull so Python's own flush at exit cannot raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
