"""python -m fuzz HARNESS|all [libFuzzer flags] [corpus folders]

HARNESS: decode_image, v2_request or vision_request (``all``: each in turn, in its own process, with
the same flags; non-zero if any failed or left a crash, timeout or out-of-memory input). Without corpus
folders a harness reads its seeds (fuzz/corpus/HARNESS) and its committed crash inputs
(fuzz/regressions/HARNESS) and writes what it finds into fuzz/work/HARNESS/corpus (not committed);
crash, timeout and out-of-memory inputs go to fuzz/work/HARNESS/ unless -artifact_prefix says
otherwise. Unless given, -rss_limit_mb=1024 and -timeout=5 (seconds for one input) guard memory and
time: the harnesses' limits keep any valid request far below both (fuzz/plane.py), so an input that
needs more is a bug too.

A file instead of a folder runs just that input (libFuzzer's replay): ``python -m fuzz v2_request
fuzz/work/v2_request/crash-…`` shows the traceback.

The project's modules and Pillow are instrumented for coverage as this imports the harness, so this
module must be what imports them first (``python -m fuzz``, not an import from elsewhere).
"""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HARNESSES = ("decode_image", "v2_request", "vision_request")
DEFAULTS = {"-rss_limit_mb": "1024", "-timeout": "5"}  # see fuzz/README.md
INSTRUMENTED = ["attnserve", "PIL"]
# the accepted formats' (service/stages/decode.py FORMATS; a JPEG with an MPF index opens as MPO)
PLUGINS = [f"{f}ImagePlugin" for f in ("Jpeg", "Mpo", "Png", "WebP", "Bmp", "Tiff", "Gif")]


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in (*HARNESSES, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        return fuzz_all(rest)
    return fuzz(name, rest)


def fuzz_all(flags: list[str]) -> int:
    """Each harness in turn with ``flags`` and its own folders; 1 if any left a crash, timeout or
    out-of-memory input behind (with -fork and -ignore_crashes libFuzzer itself exits 0 then)."""
    if any(not f.startswith("-") for f in flags) or any(f.startswith("-artifact_prefix") for f in flags):
        print("python -m fuzz all: flags only; each harness uses its own folders", file=sys.stderr)
        return 2
    worst, found = 0, []
    for harness in HARNESSES:
        work, started = HERE / "work" / harness, time.time()
        print(f"== fuzz {harness}", file=sys.stderr, flush=True)
        worst = max(
            worst, subprocess.run([sys.executable, "-m", "fuzz", harness, *flags], cwd=ROOT).returncode
        )
        found += sorted(p for p in artifacts(work) if p.stat().st_mtime >= started - 1)
    for path in found:
        shown = path.relative_to(ROOT)
        print(f"found {shown}: python -m fuzz.replay {path.parent.name} {shown}", file=sys.stderr)
    return max(worst, 1 if found else 0)


def artifacts(work: Path) -> list[Path]:
    return [p for kind in ("crash", "timeout", "oom", "slow-unit") for p in work.glob(f"{kind}-*")]


def fuzz(name: str, args: list[str]) -> int:
    import atheris  # the lock installs it; a missing atheris is an error, not a skip

    flags = [a for a in args if a.startswith("-")]
    folders = [a for a in args if not a.startswith("-")]
    given = {f.split("=", 1)[0] for f in flags}
    work = HERE / "work" / name
    if not folders:
        (work / "corpus").mkdir(parents=True, exist_ok=True)
        folders = [str(work / "corpus"), str(HERE / "corpus" / name)]
        if (HERE / "regressions" / name).is_dir():
            folders.append(str(HERE / "regressions" / name))
    if "-artifact_prefix" not in given:
        work.mkdir(parents=True, exist_ok=True)
        flags.append(f"-artifact_prefix={work}/")
    flags += [f"{k}={v}" for k, v in DEFAULTS.items() if k not in given]
    # -fork/-jobs start this same command again: a command line the shell runs from any folder
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = f"{sys.executable} -m fuzz {name}"
    with atheris.instrument_imports(include=INSTRUMENTED):
        harness = importlib.import_module(f"fuzz.{name}")
        for plugin in PLUGINS:  # Pillow imports them on first use: now, so they are instrumented too
            importlib.import_module(f"PIL.{plugin}")
    harness.check(b"")  # builds the data plane now, not inside the first input's -timeout
    mutator = getattr(harness, "mutator", None)  # structure-aware, for the request harnesses
    atheris.Setup([command, *flags, *folders], harness.check, custom_mutator=mutator)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
