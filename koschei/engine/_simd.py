"""Register-tile kernels written in LLVM IR, for the compute-bound loops of the engine.

LLVM's loop vectorizer cannot be told how to vectorize a Numba loop nest: given the scalar
loops of a matrix-multiply tile it vectorizes the reduction over k (one vector of partial sums
per output, then a horizontal sum each), or nothing at all. The packed GEMM needs the other
shape, the one every BLAS uses: an ``mr x nr`` block of C held in vector registers for the whole
of a ``kc`` loop, each step loading ``nr`` values of B as vectors and broadcasting ``mr`` values
of A, one fused multiply-add per vector of C. These intrinsics build that loop directly in LLVM
IR (vector phi nodes, ``llvm.fmuladd`` on ``<16 x float>``), and LLVM's x86 back end selects
``vbroadcastss`` / ``vfmadd231ps`` on zmm registers for it (ymm pairs, or SSE quadruples, where
the machine has no AVX-512: the IR is the same, only the instruction selection differs).

Numba calls them like functions from ``@njit`` code; the tile sizes are compile-time constants
(integer literals at the call site), so each size is its own fully unrolled loop.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

# float32 lanes of one LLVM vector (one zmm register on AVX-512)
LANES = 16
# the largest register tile: accumulators + a broadcast + the loaded B vectors must fit in the
# 32 vector registers of AVX-512, or LLVM spills accumulators to the stack in the inner loop
MAX_TILE_VECTORS = 28


def _literal_int(value) -> int | None:
    return value.literal_value if isinstance(value, numba.types.IntegerLiteral) else None


def tile_fits(mr: int, nr: int) -> bool:
    """Whether an ``mr x nr`` float32 tile is one mma_tile can hold in registers."""
    return mr >= 1 and nr >= LANES and nr % LANES == 0 and mr * (nr // LANES) <= MAX_TILE_VECTORS


@intrinsic(prefer_literal=True)
def mma_tile(typingctx, mr, nr, kc, a, a_start, a_row, a_step, b, b_start, b_step, c, c_row,
             c_col, accumulate, bias):
    """C[c_row : c_row + mr, c_col : c_col + nr] (+)= sum over p < kc of the outer product of
    ``a[a_start + p a_step + i a_row]`` (i < mr) and ``b[b_start + p b_step : + nr]``.

    a and b are 1-D, C-contiguous float32: step p of the tile's loop reads mr values of A, one
    per row, ``a_row`` apart (column p of an mr-row block), and nr consecutive values of B (row p
    of an nr-column block). A packed panel of A has a_row = 1 and a_step = mr; a row-major
    A (m, k) read in place, a.reshape(-1), has a_row = k and a_step = 1. A packed panel of B
    has b_step = nr; a row-major B (k, n) read in place has b_step = n. c is a 2-D float32 array with unit stride along its rows; the tile
    must lie inside it (the caller's packing pads edge tiles). With ``accumulate`` false the
    tile is stored, plus ``bias[c_col : c_col + nr]`` when bias is an array (None: no bias);
    with ``accumulate`` true it is added to what C holds (no bias). mr and nr are integer
    literals with tile_fits(mr, nr).
    """
    mr_value, nr_value = _literal_int(mr), _literal_int(nr)
    if mr_value is None or nr_value is None or not tile_fits(mr_value, nr_value):
        return None
    float32 = numba.types.float32
    for panel in (a, b):
        if not (isinstance(panel, numba.types.Array) and panel.ndim == 1
                and panel.dtype == float32 and panel.layout == "C"):
            return None
    if not (isinstance(c, numba.types.Array) and c.ndim == 2 and c.dtype == float32
            and c.layout in ("C", "A")):
        return None
    if not all(isinstance(value, numba.types.Integer)
               for value in (kc, a_start, a_row, a_step, b_start, b_step, c_row, c_col)):
        return None
    has_bias = not isinstance(bias, (numba.types.NoneType, numba.types.Omitted))
    if has_bias and not (isinstance(bias, numba.types.Array) and bias.ndim == 1
                         and bias.dtype == float32):
        return None
    vectors = nr_value // LANES
    signature = numba.types.void(mr, nr, kc, a, a_start, a_row, a_step, b, b_start, b_step, c,
                                 c_row, c_col, accumulate, bias)

    def codegen(context, builder, sig, args):
        (_, _, kc_value, a_value, a_start_value, a_row_value, a_step_value, b_value,
         b_start_value, b_step_value, c_value, row_value, col_value, accumulate_value,
         bias_value) = args
        index = ir.IntType(64)
        vector = ir.VectorType(ir.FloatType(), LANES)
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fmuladd.v{LANES}f32")

        def as_index(value, value_type):
            if value.type.width == 64:
                return value
            return builder.sext(value, index) if value_type.signed else builder.zext(value, index)

        def constant(value):
            return ir.Constant(index, value)

        def stride(value, position):
            literal = _literal_int(sig.args[position])
            return constant(literal) if literal is not None else as_index(value, sig.args[position])

        kc_value = as_index(kc_value, sig.args[2])
        a_start_value = as_index(a_start_value, sig.args[4])
        a_row_value = stride(a_row_value, 5)
        a_step_value = stride(a_step_value, 6)
        b_start_value = as_index(b_start_value, sig.args[8])
        b_step_value = stride(b_step_value, 9)
        row_value = as_index(row_value, sig.args[11])
        col_value = as_index(col_value, sig.args[12])
        a_data = context.make_array(sig.args[3])(context, builder, a_value).data
        b_data = context.make_array(sig.args[7])(context, builder, b_value).data
        c_array = context.make_array(sig.args[10])(context, builder, c_value)
        zero = ir.Constant(vector, [0.0] * LANES)
        broadcast_mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)

        def vector_at(pointer, offset):
            return builder.bitcast(builder.gep(pointer, [constant(offset)], inbounds=True),
                                   vector.as_pointer())

        # C's rows: asked for now, so that they arrive while the loop computes
        row_stride = builder.sdiv(cgutils.unpack_tuple(builder, c_array.strides, 2)[0],
                                  constant(4))
        corner = builder.gep(c_array.data, [builder.add(builder.mul(row_value, row_stride),
                                                        col_value)], inbounds=True)
        rows = [builder.gep(corner, [builder.mul(constant(i), row_stride)], inbounds=True)
                for i in range(mr_value)]
        for row in rows:
            for line in range(0, nr_value, LANES):
                _prefetch(builder, builder.gep(row, [constant(line)], inbounds=True))

        # the k loop: one block of vector phis (the C tile), one FMA per vector per step
        entry = builder.basic_block
        body = builder.append_basic_block("mma.body")
        after = builder.append_basic_block("mma.after")
        builder.cbranch(builder.icmp_signed(">", kc_value, constant(0)), body, after)
        builder.position_at_end(body)
        step = builder.phi(index)
        step.add_incoming(constant(0), entry)
        tile = [[builder.phi(vector) for _ in range(vectors)] for _ in range(mr_value)]
        for row in tile:
            for accumulator in row:
                accumulator.add_incoming(zero, entry)
        b_row = builder.gep(b_data, [builder.add(b_start_value,
                                                 builder.mul(step, b_step_value))],
                            inbounds=True)
        b_vectors = [builder.load(vector_at(b_row, v * LANES), align=4) for v in range(vectors)]
        a_column = builder.gep(a_data, [builder.add(a_start_value,
                                                    builder.mul(step, a_step_value))],
                               inbounds=True)
        updated = []
        for i in range(mr_value):
            value = builder.load(builder.gep(a_column, [builder.mul(constant(i), a_row_value)],
                                             inbounds=True), align=4)
            lane0 = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                           ir.Constant(ir.IntType(32), 0))
            broadcast = builder.shuffle_vector(lane0, ir.Constant(vector, ir.Undefined),
                                               broadcast_mask)
            updated.append([builder.call(fmuladd, [broadcast, b_vectors[v], tile[i][v]])
                            for v in range(vectors)])
        next_step = builder.add(step, constant(1))
        body_end = builder.basic_block
        step.add_incoming(next_step, body_end)
        for i in range(mr_value):
            for v in range(vectors):
                tile[i][v].add_incoming(updated[i][v], body_end)
        builder.cbranch(builder.icmp_signed("<", next_step, kc_value), body, after)

        # the store: C's rows are c_row + i, its columns c_col + v LANES ...
        builder.position_at_end(after)
        result = []
        for i in range(mr_value):
            row = []
            for v in range(vectors):
                merged = builder.phi(vector)
                merged.add_incoming(zero, entry)
                merged.add_incoming(updated[i][v], body_end)
                row.append(merged)
            result.append(row)
        accumulate_flag = builder.icmp_unsigned("!=", accumulate_value,
                                                ir.Constant(accumulate_value.type, 0))
        with builder.if_else(accumulate_flag) as (add_to_c, store):
            with add_to_c:
                for i in range(mr_value):
                    for v in range(vectors):
                        pointer = vector_at(rows[i], v * LANES)
                        builder.store(builder.fadd(builder.load(pointer, align=4), result[i][v]),
                                      pointer, align=4)
            with store:
                if has_bias:
                    bias_data = context.make_array(sig.args[14])(context, builder,
                                                                 bias_value).data
                    bias_at = builder.gep(bias_data, [col_value], inbounds=True)
                    bias_vectors = [builder.load(vector_at(bias_at, v * LANES), align=4)
                                    for v in range(vectors)]
                for i in range(mr_value):
                    for v in range(vectors):
                        value = result[i][v]
                        if has_bias:
                            value = builder.fadd(value, bias_vectors[v])
                        builder.store(value, vector_at(rows[i], v * LANES), align=4)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def transpose_16x16(typingctx, src, row, col, dst, start, stride):
    """dst[start + q stride + i] = src[row + i, col + q] for i, q < 16: a 16 x 16 block of a
    float32 matrix (unit stride along its rows) written transposed into a 1-D float32 array,
    16 contiguous values per column q. Sixteen vector loads, four rounds of sixteen two-input
    shuffles (blocks of 8, 4, 2 and 1 lanes swapped across the diagonal), sixteen vector stores:
    the transposing copy of a weight into the GEMM's panels at a few instructions per 16 values
    instead of a load and a store per value. The block must lie inside both arrays."""
    float32 = numba.types.float32
    if not (isinstance(src, numba.types.Array) and src.ndim == 2 and src.dtype == float32
            and src.layout in ("C", "A")):
        return None
    if not (isinstance(dst, numba.types.Array) and dst.ndim == 1 and dst.dtype == float32
            and dst.layout == "C"):
        return None
    signature = numba.types.void(src, row, col, dst, start, stride)

    def codegen(context, builder, sig, args):
        src_value, row_value, col_value, dst_value, start_value, stride_value = args
        index = ir.IntType(64)
        vector = ir.VectorType(ir.FloatType(), LANES)

        def as_index(value, value_type):
            if value.type.width == 64:
                return value
            return builder.sext(value, index) if value_type.signed else builder.zext(value, index)

        row_value, col_value = as_index(row_value, sig.args[1]), as_index(col_value, sig.args[2])
        start_value = as_index(start_value, sig.args[4])
        stride_value = as_index(stride_value, sig.args[5])
        source = context.make_array(sig.args[0])(context, builder, src_value)
        target = context.make_array(sig.args[3])(context, builder, dst_value)
        row_stride = builder.sdiv(cgutils.unpack_tuple(builder, source.strides, 2)[0],
                                  ir.Constant(index, 4))
        corner = builder.gep(source.data, [builder.add(builder.mul(row_value, row_stride),
                                                       col_value)], inbounds=True)
        rows = []
        for i in range(LANES):
            pointer = builder.gep(corner, [builder.mul(ir.Constant(index, i), row_stride)],
                                  inbounds=True)
            rows.append(builder.load(builder.bitcast(pointer, vector.as_pointer()), align=4))
        for block in (8, 4, 2, 1):
            # lanes of a (the lower row of a pair) keep their place where (lane & block) == 0
            # and take b's lane - block elsewhere; b's the other way round (shuffle indices
            # count a's lanes 0-15, then b's 16-31)
            low = [lane if not lane & block else LANES + lane - block for lane in range(LANES)]
            high = [lane + block if not lane & block else LANES + lane for lane in range(LANES)]
            mask_low = ir.Constant(ir.VectorType(ir.IntType(32), LANES), low)
            mask_high = ir.Constant(ir.VectorType(ir.IntType(32), LANES), high)
            shuffled = list(rows)
            for i in range(LANES):
                if i & block:
                    continue
                a, b = rows[i], rows[i + block]
                shuffled[i] = builder.shuffle_vector(a, b, mask_low)
                shuffled[i + block] = builder.shuffle_vector(a, b, mask_high)
            rows = shuffled
        base = builder.gep(target.data, [start_value], inbounds=True)
        for q in range(LANES):
            pointer = builder.gep(base, [builder.mul(ir.Constant(index, q), stride_value)],
                                  inbounds=True)
            builder.store(rows[q], builder.bitcast(pointer, vector.as_pointer()), align=4)
        return context.get_dummy_value()

    return signature, codegen


# =================================================================================================
# int8 dot-product tiles on AVX-512 VNNI (vpdpbusd), for the quantized_linear family
# =================================================================================================
#
# vpdpbusd (``llvm.x86.avx512.vpdpbusd.512``) multiplies the 64 unsigned bytes of one zmm register
# by the 64 signed bytes of another and adds each group of 4 consecutive products to one of 16
# int32 lanes of an accumulator: 64 multiply-adds per instruction; here 6.6 instructions per ns
# per core in a loop of registers alone, ~290 G multiply-adds/s per core in a 3 x 8 tile that
# reads L1. The four products are summed with the lane at full int32 width, wrapping
# modulo 2**32 and never saturating: unlike vpmaddubsw, whose pairs of products are added into
# *saturating* int16 (255 * 127 * 2 = 64770 > 32767), no intermediate overflows, so the sums are
# exact whenever the true sum fits an int32 (and exact modulo 2**32 always, which lets a caller
# subtract a known offset afterwards).
#
# The tiles below keep the rows x tokens accumulators of a register tile in zmm registers for a
# whole run of k: each step loads 64 consecutive bytes (k .. k + 63) of each weight row and of
# each token, and does rows x tokens vpdpbusd, so a weight vector serves every token of the tile
# and an activation vector every row. Lane l of an accumulator holds the products of k = 4 l ..
# 4 l + 3 of every step; the 16 lanes are summed once at the end (folded pairwise across the
# tile's accumulators: 2 shuffles and an add per pair of vectors). No weight layout is needed:
# the rows are read where they are, row-major as PyTorch's Linear keeps them; a partial step
# uses masked loads (AVX-512 byte masks), so nothing past a row's end is read. (dot_tile_u8s8
# also begins with a partial step up to the first row's next 64-byte line: NumPy aligns arrays
# to 16 or 32 bytes, and a 64-byte load across two lines costs two.)
#
# Only for a CPU with AVX-512 VNNI (HAS_AVX512_VNNI): callers keep a portable path for the others.

# accumulators of one tile (rows x tokens): with the loaded operands they must fit the 32 zmm
# registers, or LLVM spills accumulators inside the loop
MAX_DOT_TILE = 24
# bytes of one vpdpbusd operand: k .. k + 63 of one row
DOT_STEP = 64

_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_BYTES = ir.VectorType(_I8, DOT_STEP)  # one zmm register of bytes
_HALVES = ir.VectorType(_I16, DOT_STEP // 2)
_WORDS = ir.VectorType(_I32, DOT_STEP // 4)  # the 16 int32 lanes of an accumulator


def _numba_cpu_features() -> str:
    """The target features Numba compiles for: NUMBA_CPU_FEATURES if set, none known for a named
    NUMBA_CPU_NAME (e.g. ``generic``, for portable caches), else this host's."""
    from llvmlite import binding

    config = numba.core.config
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES
    if config.CPU_NAME not in (None, "host"):
        return ""
    return binding.get_host_cpu_features().flatten()


def _has_features(features: str, *names: str) -> bool:
    enabled = set(features.split(","))
    return all(f"+{name}" in enabled for name in names)


# Whether the dot tiles can be compiled: Numba's target has AVX-512 F, BW (byte masks) and VNNI.
HAS_AVX512_VNNI = _has_features(_numba_cpu_features(), "avx512f", "avx512bw", "avx512vnni")


def _vpdpbusd_operand_type() -> ir.VectorType:
    """The type of vpdpbusd's byte operands in this LLVM: <64 x i8> in recent versions (22 here),
    <16 x i32> in older ones (which newer ones still accept and upgrade, but not conversely)."""
    from llvmlite import binding

    probe = ("declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <64 x i8>, "
             "<64 x i8>)\n")
    try:
        binding.parse_assembly(probe).verify()
    except RuntimeError:
        return _WORDS
    return _BYTES


_VPDPBUSD_OPERAND = _vpdpbusd_operand_type()


def dot_tile_fits(rows: int, tokens: int) -> bool:
    """Whether a rows x tokens tile of int32 accumulators is one the dot tiles hold in registers."""
    return rows >= 1 and tokens >= 1 and rows * tokens <= MAX_DOT_TILE


def _tile_shape(rows, tokens, ahead) -> tuple[int, int, int] | None:
    shape = (_literal_int(rows), _literal_int(tokens), _literal_int(ahead))
    if None in shape or not dot_tile_fits(shape[0], shape[1]) or shape[2] < 0:
        return None
    return shape


def _is_matrix(array, dtypes) -> bool:
    return (isinstance(array, numba.types.Array) and array.ndim == 2 and array.dtype in dtypes
            and array.layout == "C")


def _as_index(builder, value, value_type):
    if value.type.width == 64:
        return value
    return builder.sext(value, _I64) if value_type.signed else builder.zext(value, _I64)


def _row_pointers(builder, array, first, count, column):
    """Pointers to column ``column`` of rows first .. first + count - 1 of a 2-D C-contiguous
    array; a row past the last one is the last one (the caller ignores its sums)."""
    rows, width = (builder.extract_value(array.shape, axis) for axis in range(2))
    last = builder.sub(rows, _I64(1))
    pointers = []
    for offset in range(count):
        row = builder.add(first, _I64(offset))
        row = builder.select(builder.icmp_signed("<", row, rows), row, last)
        pointers.append(builder.gep(array.data, [builder.add(builder.mul(row, width), column)]))
    return pointers


def _splat(builder, vector_type, value):
    lanes = vector_type.count
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, _I32(0))
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _load_step(builder, pointer, count=None):
    """The 64 bytes at ``pointer``; with ``count`` (< 64), only the first count are read (a
    masked load: AVX-512 vmovdqu8 with a byte mask) and the others are 0."""
    pointer = builder.bitcast(pointer, _BYTES.as_pointer())
    if count is None:
        return builder.load(pointer, align=1)
    masked_load = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(_BYTES, [pointer.type, _I32, ir.VectorType(_I1, DOT_STEP), _BYTES]),
        f"llvm.masked.load.v{DOT_STEP}i8.p0")
    lanes = ir.Constant(_BYTES, list(range(DOT_STEP)))
    mask = builder.icmp_unsigned("<", lanes, _splat(builder, _BYTES, builder.trunc(count, _I8)))
    return builder.call(masked_load, [pointer, _I32(1), mask, ir.Constant(_BYTES, [0] * DOT_STEP)])


def _prefetch(builder, pointer):
    """Ask for the cache line at ``pointer`` (prefetcht0: into every level; never faults)."""
    byte_pointer = _I8.as_pointer()
    prefetch = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, _I32, _I32, _I32]),
        "llvm.prefetch.p0")
    builder.call(prefetch, [builder.bitcast(pointer, byte_pointer), _I32(0), _I32(3), _I32(1)])


def _vpdpbusd(builder):
    """accumulator, u8 bytes, s8 bytes -> accumulator + the sums of 4 products per lane."""
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_WORDS, [_WORDS, _VPDPBUSD_OPERAND, _VPDPBUSD_OPERAND]),
        "llvm.x86.avx512.vpdpbusd.512")

    def call(accumulator, unsigned_bytes, signed_bytes):
        if _VPDPBUSD_OPERAND != _BYTES:
            unsigned_bytes = builder.bitcast(unsigned_bytes, _VPDPBUSD_OPERAND)
            signed_bytes = builder.bitcast(signed_bytes, _VPDPBUSD_OPERAND)
        return builder.call(function, [accumulator, unsigned_bytes, signed_bytes])

    return call


def _partial_step(builder, accumulators, count, offset, step):
    """``step(accumulators, offset, count)`` when ``count`` > 0, else the accumulators as they
    are (a branch and phis)."""
    before = builder.basic_block
    partial = builder.append_basic_block("dot.partial")
    done = builder.append_basic_block("dot.partial_done")
    builder.cbranch(builder.icmp_signed(">", count, _I64(0)), partial, done)
    builder.position_at_end(partial)
    updated = step(accumulators, offset, count)
    partial_end = builder.basic_block
    builder.branch(done)
    builder.position_at_end(done)
    merged = []
    for old, new in zip(accumulators, updated):
        value = builder.phi(_WORDS)
        value.add_incoming(old, before)
        value.add_incoming(new, partial_end)
        merged.append(value)
    return merged


def _full_steps(builder, accumulators, steps, start, step):
    """``step(accumulators, offset, None)`` for offset = start, start + 64, ..., start + 64
    (steps - 1): a loop that keeps the accumulators in vector phis."""
    before = builder.basic_block
    body = builder.append_basic_block("dot.body")
    done = builder.append_basic_block("dot.body_done")
    stop = builder.add(start, builder.mul(steps, _I64(DOT_STEP)))
    builder.cbranch(builder.icmp_signed(">", steps, _I64(0)), body, done)
    builder.position_at_end(body)
    # the byte offset itself is the loop's variable: every load is [row + offset]
    offset = builder.phi(_I64)
    offset.add_incoming(start, before)
    looped = []
    for old in accumulators:
        value = builder.phi(_WORDS)
        value.add_incoming(old, before)
        looped.append(value)
    updated = step(looped, offset, None)
    following = builder.add(offset, _I64(DOT_STEP))
    body_end = builder.basic_block
    offset.add_incoming(following, body_end)
    for value, new in zip(looped, updated):
        value.add_incoming(new, body_end)
    builder.cbranch(builder.icmp_signed("<", following, stop), body, done)
    builder.position_at_end(done)
    merged = []
    for old, new in zip(accumulators, updated):
        value = builder.phi(_WORDS)
        value.add_incoming(old, before)
        value.add_incoming(new, body_end)
        merged.append(value)
    return merged


def _accumulate_steps(builder, count, head, length, step):
    """``count`` int32 accumulators, zero, updated by ``step(accumulators, offset, bytes)`` over
    ``length`` bytes: a partial step of ``head`` bytes at offset 0 (when head > 0), full steps
    of 64 bytes (bytes None), then a partial step of what is left (when anything is)."""
    accumulators = [ir.Constant(_WORDS, [0] * _WORDS.count)] * count
    accumulators = _partial_step(builder, accumulators, head, _I64(0), step)
    steps = builder.udiv(builder.sub(length, head), _I64(DOT_STEP))
    accumulators = _full_steps(builder, accumulators, steps, head, step)
    tail_offset = builder.add(head, builder.mul(steps, _I64(DOT_STEP)))
    return _partial_step(builder, accumulators, builder.sub(length, tail_offset), tail_offset,
                         step)


def _lane_sums(builder, vectors):
    """The sum of the 16 lanes of each of ``vectors``, as (vector, lane) pairs in their order.

    Pairs of vectors are folded into one: the low half of each segment of lanes plus its high
    half, so that two vectors of one 16-lane segment become one vector of two 8-lane segments,
    then four of 4 lanes, ..., sixteen of one lane each: 15 folds (2 shuffles and an add each)
    for 16 vectors, where a reduction per vector takes 4 shuffles and 4 adds. A vector without
    a partner is folded with zeros."""
    lanes = _WORDS.count
    shuffle_type = ir.VectorType(_I32, lanes)
    # (vector, labels): the vector holds len(labels) segments of lanes // len(labels) lanes,
    # segment s summing to vectors[labels[s]] (None: zeros)
    items = [(vector, [index]) for index, vector in enumerate(vectors)]
    width = lanes
    while width > 1:
        half = width // 2
        low, high = [], []
        for source in (0, lanes):
            for segment in range(lanes // width):
                start = source + segment * width
                low.extend(range(start, start + half))
                high.extend(range(start + half, start + width))
        folded = []
        for first in range(0, len(items), 2):
            a, a_labels = items[first]
            if first + 1 < len(items):
                b, b_labels = items[first + 1]
            else:
                b, b_labels = ir.Constant(_WORDS, [0] * lanes), [None] * len(a_labels)
            value = builder.add(builder.shuffle_vector(a, b, ir.Constant(shuffle_type, low)),
                                builder.shuffle_vector(a, b, ir.Constant(shuffle_type, high)))
            folded.append((value, a_labels + b_labels))
        items, width = folded, half
    where = {}
    for vector, labels in items:
        for lane, label in enumerate(labels):
            if label is not None:
                where[label] = (vector, lane)
    return [where[index] for index in range(len(vectors))]


def _store_tile(builder, context, sums_type, sums_value, token_index, row_index, rows, tokens,
                totals):
    """sums[token_index + t, row_index + r] = the lane sum of totals[t rows + r]: one vector
    store of ``rows`` int32 per token."""
    sums_array = context.make_array(sums_type)(context, builder, sums_value)
    width = builder.extract_value(sums_array.shape, 1)
    corner = builder.gep(sums_array.data, [builder.add(builder.mul(token_index, width),
                                                       row_index)])
    placed = _lane_sums(builder, totals)
    undefined = ir.Constant(_WORDS, ir.Undefined)
    row_type = ir.VectorType(_I32, rows)
    for t in range(tokens):
        sources, indices = [], []
        for vector, lane in placed[t * rows:(t + 1) * rows]:
            if vector not in sources:
                sources.append(vector)
            indices.append(lane + _WORDS.count * sources.index(vector))
        first, second = (sources + [undefined])[:2]
        value = builder.shuffle_vector(first, second,
                                       ir.Constant(ir.VectorType(_I32, rows), indices))
        target = builder.gep(corner, [builder.mul(_I64(t), width)])
        builder.store(value, builder.bitcast(target, row_type.as_pointer()), align=4)


@intrinsic(prefer_literal=True)
def dot_tile_u8s8(typingctx, rows, tokens, ahead, w, w_first, x, x_first, k_first, k_count,
                  sums, sums_token, sums_row):
    """sums[sums_token + t, sums_row + r] = the sum over k_first <= k < k_first + k_count of
    u(w[w_first + r, k]) * x[x_first + t, k], modulo 2**32, for every r < rows and t < tokens.

    u(v) is v for a uint8 w, and v + 128 for an int8 w: its sign bit flipped (one vpxord per
    weight vector, shared by the tile's tokens), so that int8 weights become vpdpbusd's unsigned
    operand; the caller takes 128 * sum_k x[t, k] off afterwards (exact modulo 2**32). x is int8.

    w and x are 2-D C-contiguous; rows past w's last are read as its last row, tokens past x's
    last as its last token (their sums are meaningless; the caller drops them). The k range must
    lie inside both; it is read in steps of 64 bytes, the last partial one with masked loads.
    ``ahead`` > 0 prefetches, at each step, the same bytes of the rows ``ahead`` rows further
    (the next tile's, for ahead = rows): short rows give the hardware prefetcher too little to
    go on. rows, tokens and ahead are integer literals with dot_tile_fits(rows, tokens).

    sums is a 2-D C-contiguous int32 array that holds the whole tile (a tile at the last rows
    needs room for its meaningless sums too), each token's ``rows`` sums one vector store.
    """
    shape = _tile_shape(rows, tokens, ahead)
    if shape is None or not (_is_matrix(w, (numba.types.int8, numba.types.uint8))
                             and _is_matrix(x, (numba.types.int8,))
                             and _is_matrix(sums, (numba.types.int32,))):
        return None
    rows_value, tokens_value, ahead_value = shape
    flip_sign = w.dtype == numba.types.int8
    signature = numba.types.void(rows, tokens, ahead, w, w_first, x, x_first, k_first, k_count,
                                 sums, sums_token, sums_row)

    def codegen(context, builder, sig, args):
        (_, _, _, w_value, w_first_value, x_value, x_first_value, k_first_value, k_count_value,
         sums_value, sums_token_value, sums_row_value) = args
        w_array = context.make_array(sig.args[3])(context, builder, w_value)
        x_array = context.make_array(sig.args[5])(context, builder, x_value)
        k_first_index = _as_index(builder, k_first_value, sig.args[7])
        k_count_index = _as_index(builder, k_count_value, sig.args[8])
        w_rows = _row_pointers(builder, w_array, _as_index(builder, w_first_value, sig.args[4]),
                               rows_value, k_first_index)
        x_rows = _row_pointers(builder, x_array, _as_index(builder, x_first_value, sig.args[6]),
                               tokens_value, k_first_index)
        ahead_bytes = builder.mul(builder.extract_value(w_array.shape, 1), _I64(ahead_value))
        vpdpbusd = _vpdpbusd(builder)
        sign_bits = ir.Constant(_BYTES, [0x80] * DOT_STEP)

        def step(accumulators, offset, tail):
            if ahead_value and tail is None:
                for row in w_rows:
                    _prefetch(builder, builder.gep(row, [builder.add(offset, ahead_bytes)]))
            weights = []
            for row in w_rows:
                value = _load_step(builder, builder.gep(row, [offset]), tail)
                weights.append(builder.xor(value, sign_bits) if flip_sign else value)
            updated = list(accumulators)
            for t, token in enumerate(x_rows):
                activations = _load_step(builder, builder.gep(token, [offset]), tail)
                for r in range(rows_value):
                    index = t * rows_value + r
                    updated[index] = vpdpbusd(updated[index], weights[r], activations)
            return updated

        # a partial first step up to the first row's next 64-byte line: its loads (and those of
        # the other rows and the tokens, when they are as far from a line) are aligned after it
        to_line = builder.and_(builder.sub(_I64(0), builder.ptrtoint(w_rows[0], _I64)),
                               _I64(DOT_STEP - 1))
        head = builder.select(builder.icmp_unsigned("<", to_line, k_count_index), to_line,
                              k_count_index)
        totals = _accumulate_steps(builder, rows_value * tokens_value, head, k_count_index, step)
        _store_tile(builder, context, sig.args[9], sums_value,
                    _as_index(builder, sums_token_value, sig.args[10]),
                    _as_index(builder, sums_row_value, sig.args[11]), rows_value, tokens_value,
                    totals)
        return context.get_dummy_value()

    return signature, codegen


def ternary_plane_index(j: int) -> int:
    """Where activation j goes in the planes of dot_tile_ternary: 256 c + 64 f + i for
    j = 256 c + 4 i + f (chunk c of 64 packed bytes, byte i of it, 2-bit field f)."""
    return (j & ~255) | ((j & 3) << 6) | ((j >> 2) & 63)


@intrinsic(prefer_literal=True)
def dot_tile_ternary(typingctx, rows, tokens, ahead, packed, w_first, planes, x_first, b_first,
                     b_count, sums, sums_token, sums_row):
    """sums[sums_token + t, sums_row + r] = the sum over bytes b_first <= b < b_first + b_count
    of packed row w_first + r and fields f < 4 of ((packed[w_first + r, b] >> 2 f) & 3) *
    x_q[4 b + f] of token x_first + t, modulo 2**32, for every r < rows and t < tokens.

    packed: 2-D C-contiguous uint8, four 2-bit codes a byte (BitNet's ternary weights t + 1:
    0, 1, 2), field f of byte b the code of weight 4 b + f. planes: 2-D C-contiguous int8, the
    tokens' activations laid out to meet the codes as they come out of a 64-byte load: for each
    chunk c of 64 packed bytes, 4 planes of 64 bytes, plane f holding x_q[256 c + 4 i + f] at
    byte 256 c + 64 f + i (ternary_plane_index); a row of planes is 4 * 64 * ceil(nb / 64)
    bytes, the activations past d_in zero. b_first is a multiple of 64.

    Each step loads 64 packed bytes of a row and decodes them in registers into the 4 vectors
    of codes, (bytes >> 2 f) & 3 (a 16-bit shift and a byte mask each; the bits shifted in from
    the neighbouring byte are masked off), each a vpdpbusd operand (codes unsigned, activations
    signed) for every token of the tile. It is llama.cpp's TQ2_0 dot product
    (ggml_vec_dot_tq2_0_q8_K: 2-bit codes t + 1 unpacked with shifts and masks, multiplied by
    int8 activations with vpmaddubsw, the activations' sums taken off) and bitnet.cpp's I2_S,
    with vpdpbusd's int32 sums in place of vpmaddubsw + vpmaddwd, and with the activations
    permuted once per call to meet this packing instead of a packing made for the activations. A partial last step masks the packed load (codes 0:
    nothing read past the row). Rows and tokens past the arrays' last, ``ahead`` (prefetching),
    sums and the literals as in dot_tile_u8s8.
    """
    shape = _tile_shape(rows, tokens, ahead)
    if shape is None or not (_is_matrix(packed, (numba.types.uint8,))
                             and _is_matrix(planes, (numba.types.int8,))
                             and _is_matrix(sums, (numba.types.int32,))):
        return None
    rows_value, tokens_value, ahead_value = shape
    signature = numba.types.void(rows, tokens, ahead, packed, w_first, planes, x_first, b_first,
                                 b_count, sums, sums_token, sums_row)

    def codegen(context, builder, sig, args):
        (_, _, _, packed_value, w_first_value, planes_value, x_first_value, b_first_value,
         b_count_value, sums_value, sums_token_value, sums_row_value) = args
        packed_array = context.make_array(sig.args[3])(context, builder, packed_value)
        planes_array = context.make_array(sig.args[5])(context, builder, planes_value)
        b_first_index = _as_index(builder, b_first_value, sig.args[7])
        b_count_index = _as_index(builder, b_count_value, sig.args[8])
        w_rows = _row_pointers(builder, packed_array,
                               _as_index(builder, w_first_value, sig.args[4]), rows_value,
                               b_first_index)
        x_rows = _row_pointers(builder, planes_array,
                               _as_index(builder, x_first_value, sig.args[6]), tokens_value,
                               builder.mul(b_first_index, _I64(4)))
        ahead_bytes = builder.mul(builder.extract_value(packed_array.shape, 1),
                                  _I64(ahead_value))
        vpdpbusd = _vpdpbusd(builder)
        low_bits = ir.Constant(_BYTES, [3] * DOT_STEP)

        def step(accumulators, offset, tail):
            if ahead_value and tail is None:
                for row in w_rows:
                    _prefetch(builder, builder.gep(row, [builder.add(offset, ahead_bytes)]))
            codes = []
            for row in w_rows:
                packed_bytes = _load_step(builder, builder.gep(row, [offset]), tail)
                as_halves = builder.bitcast(packed_bytes, _HALVES)
                fields = []
                for field in range(4):
                    shifted = packed_bytes if field == 0 else builder.bitcast(
                        builder.lshr(as_halves, ir.Constant(_HALVES, [2 * field] * _HALVES.count)),
                        _BYTES)
                    fields.append(builder.and_(shifted, low_bits))
                codes.append(fields)
            updated = list(accumulators)
            chunk = builder.mul(offset, _I64(4))
            for t, token in enumerate(x_rows):
                for field in range(4):
                    activations = _load_step(
                        builder, builder.gep(token, [builder.add(chunk, _I64(DOT_STEP * field))]))
                    for r in range(rows_value):
                        index = t * rows_value + r
                        updated[index] = vpdpbusd(updated[index], codes[r][field], activations)
            return updated

        totals = _accumulate_steps(builder, rows_value * tokens_value, _I64(0), b_count_index,
                                   step)
        _store_tile(builder, context, sig.args[9], sums_value,
                    _as_index(builder, sums_token_value, sig.args[10]),
                    _as_index(builder, sums_row_value, sig.args[11]), rows_value, tokens_value,
                    totals)
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def prefetch_at(typingctx, array, index):
    """Ask for the cache line holding ``array.flat[index]`` of a C-contiguous array (prefetcht0:
    into every level). A prefetch never faults, so an index past the end is harmless: kernels
    spread the prefetches of their next inputs over the tiles of a GEMM, a few lines per
    thousand cycles of multiply-adds, so that memory streams under the compute."""
    if not (isinstance(array, numba.types.Array) and array.layout == "C"
            and isinstance(index, numba.types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        _prefetch(builder, builder.gep(data, [args[1]]))
        return context.get_dummy_value()

    return numba.types.void(array, index), codegen
