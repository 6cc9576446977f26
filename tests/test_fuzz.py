"""The fuzz harnesses (fuzz/): a bounded coverage-guided run of each from its seed corpus, and every
committed crash input (fuzz/regressions/HARNESS/) answered as the contract says: a ServiceError, in
bounded time and memory. Longer runs: ``python -m fuzz all`` (fuzz/README.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
HARNESSES = ("decode_image", "v2_request", "vision_request")
# 13 s of fuzzing each (plus ~4 s to start and finish): about a minute for the file, enough to run
# every seed and thousands of mutations of them through each harness (hundreds to thousands per
# second), which catches a harness broken by a change and a regression near the seeds; finding new
# bugs is the long runs' job (python -m fuzz all, fuzz/README.md).
SECONDS = 13
# a committed input must be answered in about the time and memory of any small request; the ones
# found so far took 0.3–4 s and 260–490 MiB before their fixes, and about 0.1 s and 13 MiB after
MAX_SECONDS, MAX_GROWTH_MIB = 2.0, 128
REGRESSIONS = sorted(p for p in (FUZZ / "regressions").glob("*/*") if p.is_file())


def test_atheris_is_installed():
    """The lock installs atheris (requirements/dev.txt): a missing one fails here rather than skipping."""
    out = subprocess.run([sys.executable, "-c", "import atheris"], capture_output=True, text=True)
    assert out.returncode == 0, f"atheris is not importable ({out.stderr.strip()}); run make install"


@pytest.mark.parametrize("harness", HARNESSES)
def test_a_bounded_fuzz_run_finds_nothing(harness, tmp_path):
    corpus = tmp_path / "corpus"  # what the run adds goes here, not into the committed seeds
    corpus.mkdir()
    command = [
        sys.executable,
        "-m",
        "fuzz",
        harness,
        f"-max_total_time={SECONDS}",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
        str(corpus),
        str(FUZZ / "corpus" / harness),
    ]
    # Started by a small shell rather than forked from this test process: Linux carries a process's peak
    # RSS across fork and exec, and libFuzzer's -rss_limit_mb reads that peak, so a child of a pytest
    # holding torch (1.2 GB) would report out-of-memory from its first input.
    launcher = ["sh", "-c", '"$@" & wait $!', "sh"]
    out = subprocess.run(
        [*launcher, *command], cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120
    )
    found = sorted(p.name for p in tmp_path.iterdir() if p.name != "corpus")
    assert out.returncode == 0 and not found, (
        f"{harness}: exit {out.returncode}, left {found} (replay: python -m fuzz.replay {harness} FILE)\n"
        + out.stderr[-6000:]
    )
    assert "stat::number_of_executed_units" in out.stderr


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_committed_crash_input_is_answered_with_a_service_error(path):
    """The harness's own check on the input, in a process of its own so that its time and peak memory
    are its own (and an input that still allocates gigabytes cannot take the test process down)."""
    harness = path.parent.name
    assert harness in HARNESSES, f"fuzz/regressions/{harness}/ is not a harness's"
    command = [sys.executable, "-m", "fuzz.replay", harness, str(path)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines, out.stderr[-4000:]
    record = json.loads(lines[-1])
    assert record["error"] is None, record["error"]["traceback"]
    assert out.returncode == 0, out.stderr[-4000:]
    assert record["seconds"] < MAX_SECONDS, f"took {record['seconds']} s"
    assert record["peak_growth_mib"] < MAX_GROWTH_MIB, f"peak memory grew {record['peak_growth_mib']} MiB"


def test_there_are_seeds_in_every_accepted_format():
    from PIL import Image

    formats = set()
    for path in (FUZZ / "corpus" / "decode_image").iterdir():
        try:
            with Image.open(path) as im:
                formats.add(im.format)
        except Exception:
            pass
    assert formats >= {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}
    for harness in HARNESSES:
        assert any((FUZZ / "corpus" / harness).iterdir()), harness
