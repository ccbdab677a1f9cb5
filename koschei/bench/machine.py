"""The machine a measurement was taken on: a fingerprint that says when two runs compare.

Two benchmark runs are comparable only when their fingerprints are equal: same CPU model, core
count, ISA flags, cache sizes, and the same numpy / numba / torch versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from importlib import metadata
from pathlib import Path

# ISA extensions that change what the compiled kernels can do.
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw",
              "avx512vl", "avx512vbmi", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
              "amx_tile", "neon", "asimd", "sve")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    from_cpuinfo = False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model name") and not from_cpuinfo:
                    model, from_cpuinfo = value.strip(), True  # platform.processor() is vaguer
                elif key in ("flags", "Features") and not flags:
                    present = set(value.split())
                    flags = [f for f in _ISA_FLAGS if f in present]
    except OSError:
        pass
    return model, flags


def _caches(root: Path = Path("/sys/devices/system/cpu")) -> list[dict]:
    """The data caches of this machine, innermost first, from Linux's sysfs (empty elsewhere).

    Each entry: ``{"level": 2, "size_bytes": 1048576, "instances": 2}``, where ``instances``
    counts the separate caches of that level (one per core for a private L2, one for an L3
    shared by every core): the capacity that ``instances`` threads on separate cores can fill is
    ``size_bytes * instances``.
    """
    found: dict[int, dict] = {}
    for cpu in sorted(root.glob("cpu[0-9]*/cache/index[0-9]*")):
        try:
            kind = (cpu / "type").read_text().strip()
            level = int((cpu / "level").read_text())
            size_text = (cpu / "size").read_text().strip().upper()
            shared = (cpu / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind not in ("Data", "Unified"):
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(size_text[-1:], 1)
        size = int(size_text.rstrip("KMG")) * scale
        entry = found.setdefault(level, {"level": level, "size_bytes": size, "shared": set()})
        entry["shared"].add(shared)
    return [{"level": e["level"], "size_bytes": e["size_bytes"], "instances": len(e["shared"])}
            for _, e in sorted(found.items())]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@cache
def describe() -> dict:
    """Every field that decides whether two measurements are comparable."""
    model, flags = _cpuinfo()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "isa_flags": flags,
        "caches": _caches(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "torch": _version("torch"),
    }


def fingerprint() -> str:
    """A short stable hash of ``describe()``."""
    text = json.dumps(describe(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
