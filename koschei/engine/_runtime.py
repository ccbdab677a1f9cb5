"""What every generated engine module shares: the Numba cache folder, argument checks, threads.

Importing this module chooses where Numba caches compiled kernels BEFORE Numba is imported (the
folder is read when Numba starts): ``$KOSCHEI_NUMBA_CACHE_DIR``, else ``$NUMBA_CACHE_DIR`` when
the user set one, else ``$XDG_CACHE_HOME/koschei/numba`` (``~/.cache/koschei/numba``); in it, a
subfolder named by a digest of the hand-written helpers (see helpers_key).

The checks are the slow path of the generated public functions: each function tests its
arguments inline with a few cheap comparisons and calls these helpers only when a test fails, so
that an error names the function, the argument, what it expected and what it got::

    rmsnorm: x: expected dtype float32, got float64

Helpers whose name starts with ``check_`` raise or return (the value was acceptable after all,
e.g. an ndarray subclass); the others build the exception for the caller to raise.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def numba_cache_dir() -> Path:
    """Where compiled kernels are cached (see the module docstring for the order of choice)."""
    chosen = os.environ.get("KOSCHEI_NUMBA_CACHE_DIR") or os.environ.get("NUMBA_CACHE_DIR")
    if chosen:
        return Path(chosen).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "koschei" / "numba"


def helpers_key() -> str:
    """A digest of the hand-written code every kernel compiles in: this module's and _simd.py's
    sources. Numba's cache notices a change to a kernel's own file only, so the kernels are
    cached in a subfolder of this name: a change to a helper compiles them afresh."""
    digest = hashlib.sha256()
    for name in ("_runtime.py", "_simd.py"):
        digest.update((Path(__file__).with_name(name)).read_bytes())
    return digest.hexdigest()[:16]


CACHE_DIR = numba_cache_dir() / f"helpers-{helpers_key()}"
os.environ["NUMBA_CACHE_DIR"] = str(CACHE_DIR)

# Numba is imported only now, after NUMBA_CACHE_DIR is set.
import ml_dtypes  # noqa: F401 - registers "bfloat16" with NumPy (np.dtype("bfloat16"))
import numba
import numpy as np
from llvmlite import binding as _llvm_binding
from llvmlite import ir
from numba.core import config as _numba_config
from numba.extending import intrinsic

# Numba was imported earlier by someone else: its configuration is read, so set it directly.
_numba_config.CACHE_DIR = str(CACHE_DIR)

# The generated modules take Numba's decorator and parallel range from here, so that Numba is
# imported after its cache folder is chosen.
njit = numba.njit
prange = numba.prange


# --- describing what was passed -----------------------------------------------------------------


def describe(value: Any) -> str:
    """A short description of an argument for error messages."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    if value is None:
        return "None"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _shape_with(shape_doc: str, dims: Mapping[str, int]) -> str:
    if not dims:
        return shape_doc
    bound = ", ".join(f"{name}={size}" for name, size in dims.items())
    return f"{shape_doc} with {bound}"


# --- arrays -------------------------------------------------------------------------------------


def check_array(function: str, name: str, value: Any, dtype: np.dtype, shape_doc: str, *,
                ndim: int | tuple[int, ...] | None = None, min_ndim: int | None = None,
                allow_empty: bool = False) -> None:
    """Raise TypeError / ValueError unless ``value`` is a C-contiguous ndarray of ``dtype`` with
    ``ndim`` dimensions (one of them, for a tuple; or at least ``min_ndim``), non-empty unless
    ``allow_empty``."""
    prefix = f"{function}: {name}: expected"
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{prefix} a numpy.ndarray of {dtype} with shape {shape_doc}, "
                        f"got {describe(value)}")
    if value.dtype != dtype:
        raise TypeError(f"{prefix} dtype {dtype}, got {value.dtype}")
    accepted = ndim if isinstance(ndim, tuple) else (ndim,)
    if ndim is not None and value.ndim not in accepted:
        count = " or ".join(map(str, accepted))
        raise ValueError(f"{prefix} {count} dimension{'s' if accepted != (1,) else ''} "
                         f"{shape_doc}, got {value.ndim} (shape {tuple(value.shape)})")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(f"{prefix} at least {min_ndim} dimension{'s' if min_ndim != 1 else ''} "
                         f"{shape_doc}, got {value.ndim} (shape {tuple(value.shape)})")
    if not value.flags.c_contiguous:
        raise ValueError(f"{prefix} a C-contiguous array, got strides {value.strides} "
                         "(pass np.ascontiguousarray(...))")
    if value.size == 0 and not allow_empty:
        raise ValueError(f"{prefix} a non-empty array, got shape {tuple(value.shape)}")


def dim_mismatch(function: str, name: str, value: np.ndarray, shape_doc: str,
                 dims: Mapping[str, int], bound_by: str) -> ValueError:
    """An input whose shape disagrees with dimensions another input already fixed."""
    return ValueError(f"{function}: {name}: expected shape {_shape_with(shape_doc, dims)} "
                      f"(from {bound_by}), got {tuple(value.shape)}")


def leading_mismatch(function: str, name: str, value: np.ndarray, shape_doc: str,
                     leading: tuple[int, ...], bound_by: str) -> ValueError:
    return ValueError(f"{function}: {name}: expected shape {shape_doc} with leading dimensions "
                      f"{leading} (from {bound_by}), got {tuple(value.shape)}")


def constraint_failed(function: str, names: str, check: str, message: str,
                      values: Mapping[str, Any]) -> ValueError:
    got = ", ".join(f"{key}={value!r}" for key, value in values.items())
    return ValueError(f"{function}: {names}: expected {check} ({message}), got {got}")


def state_in_part(function: str, inputs: Mapping[str, Any]) -> ValueError:
    """The error of a call given some of the arrays a state starts from but not all: it names
    the first one missing and those given."""
    missing = next(name for name, value in inputs.items() if value is None)
    given = [name for name, value in inputs.items() if value is not None]
    listed = " and ".join([", ".join(given[:-1]), given[-1]] if len(given) > 1 else given)
    verb = "are" if len(given) > 1 else "is"
    return ValueError(f"{function}: {missing}: expected an array, as {listed} {verb} given (the "
                      f"arrays of a state are given together, or none: it then starts from "
                      f"zeros), got None")


def check_out(function: str, out: Any, dtype: np.dtype, shape: tuple[int, ...], shape_doc: str,
              inputs: Mapping[str, np.ndarray | None], argument: str = "out") -> None:
    """Raise unless ``out`` (the argument named ``argument``) is a writeable C-contiguous
    ndarray of ``dtype`` and ``shape`` that shares no memory with the inputs."""
    prefix = f"{function}: {argument}: expected"
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{prefix} None or a numpy.ndarray of {dtype} with shape {shape}, "
                        f"got {describe(out)}")
    if out.dtype != dtype:
        raise TypeError(f"{prefix} dtype {dtype}, got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{prefix} shape {shape} {shape_doc}, got {tuple(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{prefix} a C-contiguous array, got strides {out.strides}")
    if not out.flags.writeable:
        raise ValueError(f"{prefix} a writeable array, got a read-only one")
    if not out.flags.aligned:
        raise ValueError(f"{prefix} an aligned array, got an unaligned one")
    for name, array in inputs.items():
        if array is not None and np.may_share_memory(out, array):
            raise ValueError(f"{prefix} a buffer of its own, got one that overlaps the input "
                             f"{name} (the kernel would read what it already overwrote)")


@numba.njit(inline="always")
def overlap(a, b):  # pragma: no cover - compiled by numba
    """Whether the memory of two non-empty arrays overlaps (their address ranges intersect: what
    np.may_share_memory tells), for compiled checks."""
    a_start, b_start = a.ctypes.data, b.ctypes.data
    return a_start < b_start + b.nbytes and b_start < a_start + a.nbytes


# --- scalar parameters --------------------------------------------------------------------------


def _type_error(function: str, name: str, expected: str, value: Any) -> TypeError:
    return TypeError(f"{function}: {name}: expected {expected}, got {describe(value)}")


def as_float(function: str, name: str, value: Any) -> float:
    """``value`` as a Python float: floats, ints and NumPy reals are accepted, bools are not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                      np.floating)):
        raise _type_error(function, name, "a float", value)
    return float(value)


def as_int(function: str, name: str, value: Any) -> int:
    """``value`` as a Python int: ints and NumPy integers are accepted, bools and floats not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _type_error(function, name, "an int", value)
    return int(value)


def as_bool(function: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _type_error(function, name, "True or False", value)
    return bool(value)


def as_str(function: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error(function, name, "a str", value)
    return value


def as_int_at_least(function: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int (see :func:`as_int`) that is at least ``minimum``."""
    number = as_int(function, name, value)
    if number < minimum:
        raise out_of_range(function, name, number, f">= {minimum}")
    return number


def as_choice(function: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` as one of the strings ``choices``."""
    if value not in choices:
        if not isinstance(value, str):
            raise _type_error(function, name, f"one of {choices}", value)
        raise out_of_range(function, name, value, f"one of {choices}")
    return value


def as_generator(function: str, name: str, value: Any) -> np.random.Generator:
    """``value`` as a ``numpy.random.Generator``: None (fresh entropy), a seed (an int >= 0) or a
    Generator; bools, floats and strings are not seeds."""
    if value is None or isinstance(value, np.random.Generator):
        return np.random.default_rng(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _type_error(function, name, "None, a seed or a numpy.random.Generator", value)
    if value < 0:
        raise out_of_range(function, name, value, "a seed >= 0")
    return np.random.default_rng(int(value))


def out_of_range(function: str, name: str, value: Any, expected: str) -> ValueError:
    """``expected`` reads like ``> 0``, ``>= 1``, ``<= 64`` or ``one of ('a', 'b')``."""
    return ValueError(f"{function}: {name}: expected {expected}, got {value!r}")


# --- inputs for tests and benchmarks ------------------------------------------------------------


def draw_array(rng: np.random.Generator, dtype: str, shape: tuple[int, ...],
               value_range: tuple[float, float] | None = None) -> np.ndarray:
    """The values tests and benchmarks feed a kernel: floats standard normal (uniform in
    ``value_range`` when given), integers uniform in [low, high), booleans fair coins. The 16-bit
    floats (bfloat16, float16) are float32 draws rounded to the nearest value of their dtype."""
    if dtype in ("float32", "float64"):
        if value_range is None:
            return rng.standard_normal(shape, dtype=np.dtype(dtype))
        low, high = value_range
        return rng.uniform(low, high, size=shape).astype(dtype)
    if dtype in ("bfloat16", "float16"):
        return draw_array(rng, "float32", shape, value_range).astype(np.dtype(dtype))
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if value_range is None:
        raise ValueError(f"an {dtype} input needs a range of values to draw from")
    low, high = math.ceil(value_range[0]), math.floor(value_range[1])
    return rng.integers(low, max(high, low + 1), size=shape, dtype=np.dtype(dtype))


# --- bit patterns -------------------------------------------------------------------------------


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the low 32 bits of the integer ``bits``.

    Used by kernels to build 2**k for a vectorizable exp (LLVM turns it into one register move)."""
    if not isinstance(bits, numba.types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif bits.bitwidth < 32:
            value = builder.sext(value, ir.IntType(32)) if bits.signed else \
                builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return numba.types.float32(bits), codegen


@intrinsic
def maxnum(typingctx, a, b):
    """The larger of two floats of one type, NaN counting as missing (LLVM's maxnum): unlike a
    compare-and-select, a chain of these over an array is a reduction LLVM vectorizes without
    assuming there is no NaN."""
    if not (isinstance(a, numba.types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        value_type = context.get_value_type(signature.args[0])
        function = builder.module.declare_intrinsic(
            "llvm.maxnum", [value_type], fnty=ir.FunctionType(value_type, [value_type] * 2))
        return builder.call(function, args)

    return a(a, b), codegen


# Non-temporal stores: x86 has aligned vector ones (movntps) and a fence that orders them.
_X86 = ("x86_64" in _llvm_binding.get_process_triple()
        or _llvm_binding.get_process_triple().startswith(("i386", "i686")))
STREAM_LINE_BYTES = 64  # one vector store of a cache line


@intrinsic
def stream_copy(typingctx, dst, src):
    """dst[:] = src[:] for two C-contiguous 1-D arrays of one dtype and length, writing dst
    with non-temporal stores (one aligned 64-byte vector store per line, scalar stores for the
    unaligned head and the tail, then a store fence): dst's lines are written to memory without
    first being read into the cache. For outputs far larger than the caches, this saves the
    read that every ordinary store to a line not in cache costs (write-allocate): a third of
    the memory traffic of a kernel that reads one array and writes one. Elsewhere than on x86,
    an ordinary copy."""
    if not (isinstance(dst, numba.types.Array) and isinstance(src, numba.types.Array)
            and dst.ndim == src.ndim == 1 and dst.layout == src.layout == "C"
            and dst.dtype == src.dtype
            and isinstance(dst.dtype, (numba.types.Integer, numba.types.Float))):
        return None

    def codegen(context, builder, signature, args):
        from numba.core import cgutils

        target = context.make_array(signature.args[0])(context, builder, args[0])
        source = context.make_array(signature.args[1])(context, builder, args[1])
        element = context.get_value_type(signature.args[0].dtype)
        itemsize = context.get_abi_sizeof(element)
        index_type = ir.IntType(64)
        one = ir.Constant(index_type, 1)
        count = builder.extract_value(target.shape, 0)
        target_data, source_data = target.data, source.data

        def copy_scalars(start, stop):
            with cgutils.for_range_slice(builder, start, stop, one, inc=True) as (i, _):
                value = builder.load(builder.gep(source_data, [i]))
                builder.store(value, builder.gep(target_data, [i]))

        if not _X86 or STREAM_LINE_BYTES % itemsize:
            copy_scalars(ir.Constant(index_type, 0), count)
            return context.get_dummy_value()
        lanes = STREAM_LINE_BYTES // itemsize
        address = builder.ptrtoint(target_data, index_type)
        to_line = builder.and_(builder.sub(ir.Constant(index_type, 0), address),
                               ir.Constant(index_type, STREAM_LINE_BYTES - 1))
        head = builder.udiv(to_line, ir.Constant(index_type, itemsize))
        head = builder.select(builder.icmp_signed("<", head, count), head, count)
        copy_scalars(ir.Constant(index_type, 0), head)
        lines = builder.udiv(builder.sub(count, head), ir.Constant(index_type, lanes))
        vector = ir.VectorType(element, lanes)
        nontemporal = builder.module.add_metadata([ir.IntType(32)(1)])
        with cgutils.for_range(builder, lines) as loop:
            i = builder.add(head, builder.mul(loop.index, ir.Constant(index_type, lanes)))
            value = builder.load(builder.bitcast(builder.gep(source_data, [i]),
                                                 vector.as_pointer()), align=itemsize)
            store = builder.store(value, builder.bitcast(builder.gep(target_data, [i]),
                                                         vector.as_pointer()),
                                  align=STREAM_LINE_BYTES)
            store.set_metadata("nontemporal", nontemporal)
        copy_scalars(builder.add(head, builder.mul(lines, ir.Constant(index_type, lanes))), count)
        fence = builder.module.declare_intrinsic("llvm.x86.sse.sfence",
                                                 fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fence, [])
        return context.get_dummy_value()

    return numba.types.void(dst, src), codegen


# Flush-to-zero and denormals-are-zero (MXCSR bits 15 and 6). Strong decays multiplied
# together (a chunk's exp(b_i - b_j) ~ e^-100 in a gated linear attention) are subnormal
# floats, which x86 computes through microcode assists: a chunked kernel ran 10x slower. A
# kernel's worker sets both bits for its own thread (BLAS calls on that thread get them too)
# and restores the old value at its end: values below 2^-126 ~ 1.2e-38 become 0.
_FTZ_DAZ = 0x8040


def _mxcsr_call(builder: Any, name: str, pointer: Any) -> None:
    from numba.core import cgutils

    function_type = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    function = cgutils.get_or_insert_function(builder.module, function_type, name)
    builder.call(function, [builder.bitcast(pointer, ir.IntType(8).as_pointer())])


@intrinsic
def swap_mxcsr(typingctx, value):
    """Set this thread's MXCSR (the SSE/AVX control and status word) to ``value`` (uint32) and
    return the one before; elsewhere than on x86, nothing (returns ``value``)."""
    if value != numba.types.uint32:
        return None

    def codegen(context, builder, sig, args):
        if not _X86:
            return args[0]
        from numba.core import cgutils

        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        old = builder.load(slot)
        builder.store(args[0], slot)
        _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return old

    return numba.types.uint32(numba.types.uint32), codegen


@numba.njit(cache=True, nogil=True)
def flush_denormals():  # pragma: no cover - compiled by numba
    """Turn on flush-to-zero and denormals-are-zero for this thread; returns the MXCSR to give
    back to swap_mxcsr at the end."""
    old = swap_mxcsr(np.uint32(0x1F80))
    swap_mxcsr(np.uint32(old | _FTZ_DAZ))
    return old


# --- threads ------------------------------------------------------------------------------------


def start_thread_pool() -> None:
    """Start Numba's thread pool now. A kernel loaded from Numba's cache that calls a parallel
    kernel needs the pool's symbols when it is linked (else: "LLVM ERROR: Symbol not found:
    allocate_sched", and the process ends); asking for the thread count starts the pool."""
    numba.get_num_threads()


def max_threads() -> int:
    """The most threads the kernels can use (Numba's pool, sized when Numba starts)."""
    return int(numba.config.NUMBA_NUM_THREADS)


def get_threads() -> int:
    """The threads parallel kernels use now (in this thread)."""
    return int(numba.get_num_threads())


def set_threads(count: int) -> None:
    """Let parallel kernels use ``count`` threads (1 .. max_threads()) from now on."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"set_threads: count: expected an int, got {describe(count)}")
    if not 1 <= count <= max_threads():
        raise ValueError(f"set_threads: count: expected 1 .. {max_threads()}, got {count}")
    numba.set_num_threads(count)


@contextmanager
def threads(count: int) -> Iterator[int]:
    """Run the block with ``count`` threads, then restore the previous count."""
    before = get_threads()
    set_threads(count)
    try:
        yield count
    finally:
        numba.set_num_threads(before)


# Transparent huge pages: a packed operand read tile by tile touches fewer pages when they are
# 2 MiB ones (the TLB then covers the whole blocked working set of a matrix product)
HUGE_PAGE = 2 << 20


def empty_huge(count: int, dtype: Any = np.float32) -> np.ndarray:
    """An uninitialized 1-D array of ``count`` values; from ``HUGE_PAGE`` bytes on, on its own
    memory aligned to 2 MiB that the kernel is asked to back with huge pages (Linux's madvise;
    elsewhere, or when refused, ordinary pages)."""
    dtype = np.dtype(dtype)
    size = count * dtype.itemsize
    if size < HUGE_PAGE:
        return np.empty(count, dtype=dtype)
    memory = mmap.mmap(-1, size + HUGE_PAGE)
    raw = np.frombuffer(memory, dtype=np.uint8)
    start = (-raw.ctypes.data) % HUGE_PAGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            memory.madvise(mmap.MADV_HUGEPAGE, start, size)
        except OSError:
            pass
    return raw[start:start + size].view(dtype)


_SCRATCH = threading.local()


_BLAS_CONTROLLER: Any = None


def blas_one_thread() -> Any:
    """A context in which the BLAS behind Numba's np.dot (SciPy's OpenBLAS, not NumPy's) runs
    one thread: kernels that call np.dot from one worker per core would otherwise have
    OpenBLAS's own threads fight their workers. The limit is process-wide while it lasts."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        import scipy.linalg.cython_blas  # noqa: F401 - loads the library Numba's np.dot calls
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")


def scratch(key: str, count: int, dtype: Any = np.float32) -> np.ndarray:
    """A 1-D work buffer of ``count`` values for the duration of one kernel call: the same
    memory again at the next call with ``key`` on this thread (contents undefined), grown when
    too small. Kernels that pack operands use it instead of allocating (and faulting in) fresh
    pages on every call; each thread keeps its largest buffer per key."""
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    dtype = np.dtype(dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.size < count or buffer.dtype != dtype:
        buffer = empty_huge(count, dtype)
        buffers[key] = buffer
    return buffer[:count]


@intrinsic
def claim(typingctx, counter):
    """counter[0] += 1, atomically; returns the value before it: the next task to run.

    Parallel kernels whose tasks differ in cost, or whose threads may share a core with other
    work, run one worker per thread (a prange over the threads), each claiming tasks from one
    shared int64 counter until none is left: a thread that the machine runs less takes fewer
    tasks instead of holding the others at the end of a static split."""
    if not (isinstance(counter, numba.types.Array) and counter.ndim == 1
            and counter.dtype == numba.types.int64):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", data, ir.Constant(ir.IntType(64), 1), "monotonic")

    return numba.types.int64(counter), codegen
