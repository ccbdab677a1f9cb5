"""KV cache: the keys and values of past positions, per layer, for autoregressive decoding.

A decoder's attention at position p needs the keys and values of positions 0..p of its layer.
Keeping them (instead of recomputing them from the prefix) makes each decoding step cost one new
key and value per layer plus one attention over the cache. With grouped-query attention the cache
holds ``kv_heads`` heads, not one per query head (GQA, arXiv:2305.13245: 12 query heads over 4
KV heads is a 3x smaller cache).

Shapes: a layer's cache is ``(max_len, kv_heads, head_dim)``; a step appends ``t`` positions
``(t, kv_heads, head_dim)`` to every layer; ``keys(layer)`` / ``values(layer)`` are the first
``filled`` positions of that layer ``(filled, kv_heads, head_dim)``, float32 and C-contiguous, the
layout the engine's ``attention`` takes.

One step, as a decoder runs it::

    for layer in range(num_layers):
        ...                                   # k, v: (t, kv_heads, head_dim) float32
        cache.append(layer, k, v)             # this layer now holds length + t positions
        attention(q, cache.keys(layer), cache.values(layer), causal=True)
    # the last layer's append advanced cache.length by t

Storage (``dtype``):

- ``"float32"``: keys and values as given; ``keys(layer)`` is a read-only zero-copy view.
- ``"int8"``: each head vector (one position, one head: ``head_dim`` values) is stored as int8
  with its own float32 scale, absmax quantization: ``scale = max|x| / 127``, ``q = round(x /
  scale)``, so ``x ~ q * scale`` with ``|x - q * scale| <= scale / 2 = max|x| / 254`` per element
  (plus float32 rounding of the product). That is ``head_dim + 4`` bytes per head vector instead
  of ``4 * head_dim`` (3.76x smaller for head_dim 64). ``keys(layer)`` dequantizes into one
  float32 buffer of ``max_len`` positions reused by every layer (one for keys, one for values):
  the returned array is valid until the next ``keys`` (``values``) call.
  The quantization is the engine's ``int8_quantize`` kernel on the ``(t * kv_heads, head_dim)``
  rows of a step.
"""

from __future__ import annotations

import numpy as np

from koschei.engine import _runtime as _rt

__all__ = ["KVCache"]

_DTYPES = ("float32", "int8")
_FLOAT32 = np.dtype(np.float32)
# int8 absmax quantization maps max|x| to 127 (symmetric: -127..127)
INT8_LEVELS = 127


def _quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rows (r, head_dim) float32 -> (q (r, head_dim) int8, scale (r,) float32), absmax per row."""
    from koschei.engine import int8_quantize

    q, scale = int8_quantize(rows, axis=-1)
    return q, scale.reshape(rows.shape[0])


class KVCache:
    """Keys and values of ``max_len`` positions for ``num_layers`` layers (see the module doc).

    Args:
        num_layers: layers of the model (each has its own keys and values).
        max_len: the most positions the cache holds.
        kv_heads: key/value heads per position.
        head_dim: values per head.
        dtype: ``"float32"`` (exact) or ``"int8"`` (per-(position, head) absmax scales; error
            ``<= max|head vector| / 254`` per element).

    The length advances once per step: every layer appends the same number of positions once,
    and the append of the last layer to do so advances :attr:`length`. Appending twice to a
    layer in one step, a different number of positions than the step's, or past ``max_len``
    raises ``ValueError`` and changes nothing.
    """

    def __init__(self, num_layers: int, max_len: int, kv_heads: int, head_dim: int, *,
                 dtype: str = "float32") -> None:
        function = "KVCache"
        self._num_layers = _rt.as_int_at_least(function, "num_layers", num_layers, 1)
        self._max_len = _rt.as_int_at_least(function, "max_len", max_len, 1)
        self._kv_heads = _rt.as_int_at_least(function, "kv_heads", kv_heads, 1)
        self._head_dim = _rt.as_int_at_least(function, "head_dim", head_dim, 1)
        if not isinstance(dtype, str):
            raise TypeError(f"{function}: dtype: expected one of {_DTYPES}, got "
                            f"{_rt.describe(dtype)}")
        if dtype not in _DTYPES:
            raise ValueError(f"{function}: dtype: expected one of {_DTYPES}, got {dtype!r}")
        self._dtype = dtype
        shape = (self._num_layers, self._max_len, self._kv_heads, self._head_dim)
        # np.zeros maps zeroed pages lazily: memory is touched only where positions are written
        if dtype == "float32":
            self._keys = np.zeros(shape, dtype=np.float32)  # (layers, max_len, kv_heads, hd)
            self._values = np.zeros(shape, dtype=np.float32)
        else:
            self._keys = np.zeros(shape, dtype=np.int8)
            self._values = np.zeros(shape, dtype=np.int8)
            self._key_scales = np.zeros(shape[:3], dtype=np.float32)  # (layers, max_len, kv)
            self._value_scales = np.zeros(shape[:3], dtype=np.float32)
            # dequantized positions of one layer, shared by all layers
            self._keys_float = np.zeros(shape[1:], dtype=np.float32)  # (max_len, kv_heads, hd)
            self._values_float = np.zeros(shape[1:], dtype=np.float32)
        self._filled = [0] * self._num_layers  # positions each layer holds
        self._length = 0  # positions every layer holds
        self._step = 0  # positions the step in progress appends (0: no step in progress)

    # --- what it is ---------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def kv_heads(self) -> int:
        return self._kv_heads

    @property
    def head_dim(self) -> int:
        return self._head_dim

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"int8"``: how keys and values are stored."""
        return self._dtype

    @property
    def length(self) -> int:
        """Positions every layer holds (a step in progress is not counted until it ends)."""
        return self._length

    @property
    def step_in_progress(self) -> bool:
        """True when some layers appended this step and others not yet."""
        return self._step != 0

    @property
    def bytes_per_position(self) -> int:
        """Bytes one position occupies over all layers, keys and values (int8: with scales)."""
        if self._dtype == "float32":
            per_head = 4 * self._head_dim
        else:
            per_head = self._head_dim + 4
        return 2 * self._num_layers * self._kv_heads * per_head

    @property
    def nbytes(self) -> int:
        """Bytes of the stored keys and values (and int8 scales) at ``max_len`` positions."""
        return self._max_len * self.bytes_per_position

    @property
    def buffer_nbytes(self) -> int:
        """Bytes of the float32 buffers that int8 keys and values are dequantized into (0 for
        float32: its views need no buffer)."""
        if self._dtype == "float32":
            return 0
        return self._keys_float.nbytes + self._values_float.nbytes

    def filled(self, layer: int) -> int:
        """Positions ``layer`` holds: :attr:`length`, plus the step's if it appended already."""
        return self._filled[self._check_layer("KVCache.filled", layer)]

    def __repr__(self) -> str:
        return (f"KVCache(num_layers={self._num_layers}, max_len={self._max_len}, "
                f"kv_heads={self._kv_heads}, head_dim={self._head_dim}, dtype={self._dtype!r}, "
                f"length={self._length})")

    # --- writing ------------------------------------------------------------------------------

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store the keys and values of ``t`` new positions of ``layer``.

        Args:
            layer: 0 .. num_layers - 1; each layer appends once per step.
            k, v: float32 arrays (t, kv_heads, head_dim), t >= 1 (any strides; they are copied).

        The first append of a step fixes its ``t``; the last layer's append advances
        :attr:`length` by ``t``.
        """
        function = "KVCache.append"
        layer = self._check_layer(function, layer)
        t = self._check_positions(function, "k", k)
        if self._check_positions(function, "v", v) != t or v.shape != k.shape:
            raise ValueError(f"{function}: v: expected the shape of k {tuple(k.shape)}, got "
                             f"{tuple(v.shape)}")
        start = self._filled[layer]
        if start != self._length:
            raise ValueError(f"{function}: layer: expected a layer that has not appended in this "
                             f"step (every layer appends once per step, then the length "
                             f"advances), got layer {layer}, which already holds positions "
                             f"{self._length}..{start - 1}")
        if self._step and t != self._step:
            raise ValueError(f"{function}: k: expected {self._step} new positions (the step in "
                             f"progress: layers that appended already hold "
                             f"{self._length + self._step} positions), got {t}")
        if start + t > self._max_len:
            raise ValueError(f"{function}: k: expected at most {self._max_len - start} new "
                             f"positions (the cache holds {start} of max_len {self._max_len}), "
                             f"got {t}")
        end = start + t
        if self._dtype == "float32":
            self._keys[layer, start:end] = k
            self._values[layer, start:end] = v
        else:
            rows = t * self._kv_heads
            for source, store, scales in ((k, self._keys, self._key_scales),
                                          (v, self._values, self._value_scales)):
                q, scale = _quantize_rows(np.ascontiguousarray(source).reshape(rows,
                                                                               self._head_dim))
                store[layer, start:end] = q.reshape(t, self._kv_heads, self._head_dim)
                scales[layer, start:end] = scale.reshape(t, self._kv_heads)
        self._filled[layer] = end
        if self._step == 0 and self._num_layers > 1:
            self._step = t
        elif all(filled == end for filled in self._filled):
            self._length = end
            self._step = 0

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (0 .. :attr:`length`) and drop the rest,
        including a step in progress (``truncate(cache.length)`` abandons only that step)."""
        function = "KVCache.truncate"
        if isinstance(length, (bool, np.bool_)) or not isinstance(length, (int, np.integer)):
            raise TypeError(f"{function}: length: expected an int, got {_rt.describe(length)}")
        if not 0 <= length <= self._length:
            raise ValueError(f"{function}: length: expected 0 .. {self._length} (the positions "
                             f"the cache holds), got {int(length)}")
        self._length = int(length)
        self._filled = [self._length] * self._num_layers
        self._step = 0

    def reset(self) -> None:
        """Forget every position (the memory is kept for reuse)."""
        self.truncate(0)

    # --- reading ------------------------------------------------------------------------------

    def keys(self, layer: int) -> np.ndarray:
        """The keys ``layer`` holds: float32 (filled, kv_heads, head_dim), C-contiguous,
        read-only. float32: a view of the cache; int8: dequantized into a buffer that the next
        ``keys`` call overwrites."""
        layer = self._check_layer("KVCache.keys", layer)
        if self._dtype == "float32":
            return self._view(self._keys[layer, :self._filled[layer]])
        return self._dequantize(self._keys[layer], self._key_scales[layer], self._filled[layer],
                                self._keys_float)

    def values(self, layer: int) -> np.ndarray:
        """The values ``layer`` holds: float32 (filled, kv_heads, head_dim), as :meth:`keys`."""
        layer = self._check_layer("KVCache.values", layer)
        if self._dtype == "float32":
            return self._view(self._values[layer, :self._filled[layer]])
        return self._dequantize(self._values[layer], self._value_scales[layer],
                                self._filled[layer], self._values_float)

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _view(array: np.ndarray) -> np.ndarray:
        view = array.view()
        view.flags.writeable = False
        return view

    def _dequantize(self, q: np.ndarray, scales: np.ndarray, filled: int,
                    buffer: np.ndarray) -> np.ndarray:
        """q (max_len, kv, hd) int8 and scales (max_len, kv) -> buffer[:filled] = q * scale."""
        out = buffer[:filled]  # (filled, kv_heads, head_dim)
        np.multiply(q[:filled], scales[:filled, :, None], out=out)
        return self._view(out)

    def _check_layer(self, function: str, layer: object) -> int:
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"{function}: layer: expected an int, got {_rt.describe(layer)}")
        if not 0 <= layer < self._num_layers:
            raise ValueError(f"{function}: layer: expected 0 .. {self._num_layers - 1}, got "
                             f"{int(layer)}")
        return int(layer)

    def _check_positions(self, function: str, name: str, array: object) -> int:
        """The number of positions t of a float32 (t, kv_heads, head_dim) array."""
        expected = f"(t, kv_heads, head_dim) with kv_heads={self._kv_heads}, " \
                   f"head_dim={self._head_dim}"
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{function}: {name}: expected a numpy.ndarray of float32 with shape "
                            f"{expected}, got {_rt.describe(array)}")
        if array.dtype != _FLOAT32:
            raise TypeError(f"{function}: {name}: expected dtype float32, got {array.dtype}")
        if (array.ndim != 3 or array.shape[1] != self._kv_heads
                or array.shape[2] != self._head_dim or array.shape[0] < 1):
            raise ValueError(f"{function}: {name}: expected shape {expected}, t >= 1, got "
                             f"{tuple(array.shape)}")
        return int(array.shape[0])
