"""The host CPU: the cores this process may use, and its integer dot-product features (which of
ONNX Runtime's int8 kernels it runs).

The exporter records them beside an int8 model's verification figures, and the server compares them
with its own host at load. Without VNNI (AVX2, AVX-512 BW) ONNX Runtime's uint8×int8 kernels add
pairs of products in 16 bits, which saturates for 8-bit weights; with VNNI, AMX or an ARM dot
product they accumulate exactly in 32 bits. Read from /proc/cpuinfo (Linux); elsewhere unknown.
"""

import math
import os
import platform
from pathlib import Path

# x86 flags and ARM features, as /proc/cpuinfo names them, that change how int8 matrix products run
INT8_FEATURES = (
    "avx2",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimddp",  # ARM dot product (SDOT/UDOT)
    "i8mm",  # ARM int8 matrix multiply
)
CPUINFO = Path("/proc/cpuinfo")
CGROUP = Path("/sys/fs/cgroup")


def describe(cpuinfo: Path = CPUINFO) -> dict:
    """``{"machine", "model", "int8_features"}`` of this host; features are ``None`` when unknown."""
    model, flags = "", None
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model name", "CPU part") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    features = None if flags is None else [f for f in INT8_FEATURES if f in flags]
    return {"machine": platform.machine(), "model": model or platform.processor(), "int8_features": features}


def missing_int8_features(verified_on: dict, host: dict) -> list[str]:
    """Features of the CPU a model was verified on that ``host`` lacks (none when either is unknown)."""
    verified, have = verified_on.get("int8_features"), host.get("int8_features")
    if verified is None or have is None:
        return []
    return [f for f in verified if f not in have]


def usable_cores(cgroup: Path = CGROUP) -> int:
    """The cores this process may run on: its CPU affinity, lowered by a cgroup CPU quota (a container's
    CPU limit, which affinity does not show), rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time per period the cgroup allows (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``)."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]  # v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())  # v1: -1 for none
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
