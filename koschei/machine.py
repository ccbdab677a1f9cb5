"""The machine a measurement was taken on: a fingerprint that says when two runs compare.

Two benchmark runs are comparable only when their fingerprints are equal: same CPU model, core
count, ISA flags, and the same numpy / numba / torch versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from importlib import metadata

# ISA extensions that change what the compiled kernels can do.
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
              "avx512_vnni", "avx_vnni", "amx_tile", "neon", "asimd", "sve")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model name") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    present = set(value.split())
                    flags = [f for f in _ISA_FLAGS if f in present]
    except OSError:
        pass
    return model, flags


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
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "numba": _version("numba"),
        "torch": _version("torch"),
    }


def fingerprint() -> str:
    """A short stable hash of ``describe()``."""
    text = json.dumps(describe(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
