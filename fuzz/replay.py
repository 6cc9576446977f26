"""python -m fuzz.replay HARNESS FILE...: each file through the harness's ``check``, as the fuzzer
runs it but without atheris (no instrumentation); one JSON line per file: its path, the exception
it raised (type, message, traceback; null when none: ``check`` lets only ServiceError through, as
answers), its seconds, and how far its peak resident memory rose above what was resident before it
(MiB; on Linux the peak is reset before each file, elsewhere a file after one that went higher cannot
show its own)."""

import importlib
import json
import resource
import sys
import time
import traceback

from fuzz.__main__ import HARNESSES


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak() -> float:
    """Resets the peak resident memory where Linux allows it (VmHWM) and returns the resident memory
    now, MiB; elsewhere the peak so far."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mib("VmRSS")
    except OSError:
        return peak_mib()


def peak_mib() -> float:
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in HARNESSES:
        print(__doc__, file=sys.stderr)
        return 2
    harness = importlib.import_module(f"fuzz.{argv[0]}")
    harness.check(b"")  # builds the data plane
    harness.check(b"")
    failed = False
    for path in argv[1:]:
        with open(path, "rb") as f:
            data = f.read()
        before, started = reset_peak(), time.perf_counter()
        error = None
        try:
            harness.check(data)
        except Exception as exc:
            failed = True
            kind, message = type(exc).__qualname__, str(exc)[:500]
            error = {"type": kind, "message": message, "traceback": traceback.format_exc()}
        seconds = time.perf_counter() - started
        record = {"path": path, "error": error, "seconds": round(seconds, 3)}
        record["peak_growth_mib"] = round(max(0.0, peak_mib() - before), 1)
        print(json.dumps(record), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
