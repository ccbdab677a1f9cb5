"""Models composed of engine kernels: a KV cache, a decoder-only language model and the
all-MiniLM-L6-v2 sentence encoder.

    from koschei.engine import Decoder, DecoderConfig, KVCache
    from koschei.engine.models import Decoder                    # the same objects

Each name is declared here and imported from its module on first use, so importing this package
(or ``koschei.engine``) imports neither NumPy nor Numba; the modules themselves need both.
"""

from __future__ import annotations

import importlib

# public name -> the module of this package that defines it
EXPORTS: dict[str, str] = {
    "KVCache": "kv_cache",
    "Decoder": "decoder",
    "DecoderConfig": "decoder",
    "MiniLM": "minilm",
    "MiniLMConfig": "minilm",
}

__all__ = ["Decoder", "DecoderConfig", "KVCache", "MiniLM", "MiniLMConfig"]  # the keys of EXPORTS


def __getattr__(name: str) -> object:
    module_name = EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (its models: "
                             f"{', '.join(__all__)})")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "EXPORTS"})
