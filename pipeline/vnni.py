"""Tensor intrinsics for the uint8 x int8 kernels of `packed_conv`.

`INTRIN`: 16 lanes of `int32 += 4 x (uint8 * int8)`, one AVX512-VNNI `vpdpbusd`. TVM's own
`dot_16x4_vnni` broadcasts the uint8 operand and passes `<16 x i32>` vectors, which the wheel's
LLVM 22 rejects for `llvm.x86.avx512.vpdpbusd.512` (it wants `<64 x i8>`). Ours fits
`packed_conv`'s layout: the uint8 activations are the vector (16 outputs x 4 input channels,
64 contiguous bytes) and the 4 int8 weight bytes are broadcast.

`INTRIN_STACK` is the same for an accumulator tile in a small "global" buffer, which TVM
places on the stack (LLVM keeps it in registers); "local" ones go to a heap workspace.

`INTERLEAVE`: 16 bytes from each of 4 channel rows -> 64 bytes [16 x 4], as vector shuffles;
it builds that activation layout without a byte-by-byte loop. `interleave_run` does the same
for 4 whole rows of any length (a ragged end byte by byte), read straight from a conv's input.

`UNFOLD`: 19 bytes of one row -> 64 bytes [16 x 4] where lane x holds bytes x..x+3 (a load,
a broadcast load and two shuffles): a depthwise conv's 4 neighbouring kernel taps per lane, so
`INTRIN` multiplies 4 taps at once. `UNFOLD_STRIDE2` is the same for a column stride of 2
(lane x holds bytes 2x..2x+3), `UNFOLD_HALF` for 8 lanes (rows of up to 8 outputs).
`INTRIN_UNFOLDED` is `INTRIN` with the unfold done in registers on the row itself, no
unfolded copy.

`INTRIN_DENSE`: the same instruction the other way round, for a dense layer at batch 1: 4 input
bytes broadcast (uint8) times 16 output columns x 4 weight bytes (int8, packed `[16 x 4]`),
accumulating into a stack tile.

`transposed_store(P)`: a `[P, 16]` uint8 tile (positions x channels, as a channel-lane
kernel's epilogue computes it) stored as 16 NCHW rows of P bytes: unpacks, then masked stores.
"""
from __future__ import annotations

import functools

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

INTRIN = "tvmq_vnni_u8vec_s8bcast_16x4"
INTRIN_STACK = "tvmq_vnni_u8vec_s8bcast_16x4_stack"  # accumulators in a "global" (stack) tile


def _broadcast4(buffer, dtype: str):
    """int8x64: the 4 bytes of `buffer` (uint8 or int8) repeated in all 16 int32 lanes."""
    return T.reinterpret(
        T.broadcast(T.reinterpret(buffer.vload([0], f"{dtype}x4"), dtype="int32"), 16),
        dtype="int8x64")


def _vpdpbusd(c, unsigned, signed):
    """`c`'s 16 int32 lanes plus, per lane, 4 products of uint8 bytes (`unsigned`, as int8x64)
    and int8 bytes (`signed`): one `vpdpbusd`."""
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
        c.vload([0], dtype="int32x16"), unsigned, signed, dtype="int32x16")


def _vnni(scope: str):
    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((16, 4), "uint8", offset_factor=1),
             b: T.Buffer((4,), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:4])
            T.writes(c[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.Cast("int32", a[vi, vk]) * T.Cast("int32", b[vk])

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((16, 4), "uint8", offset_factor=1),
             b: T.Buffer((4,), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:4])
            T.writes(c[0:16])
            weights = _broadcast4(b, "int8")
            c[T.ramp(T.int32(0), 1, 16)] = _vpdpbusd(
                c, T.reinterpret(a.vload([0, 0], dtype="uint8x64"), dtype="int8x64"), weights)

    return desc, impl


TensorIntrin.register(INTRIN, *_vnni("local"), override=True)
TensorIntrin.register(INTRIN_STACK, *_vnni("global"), override=True)


INTERLEAVE = "tvmq_interleave_4x16_u8"
# Shuffle indices taking 4 vectors of 16 bytes to [16 x 4]: lane x gets byte x of each vector
INTERLEAVE_4X16 = [k * 16 + x for x in range(16) for k in range(4)]


@T.prim_func(s_tir=True)
def _interleave_desc(a_handle: T.handle, d_handle: T.handle) -> None:
    stride = T.int64()
    a = T.match_buffer(a_handle, (4, 16), "uint8", offset_factor=1, strides=[stride, 1])
    d = T.match_buffer(d_handle, (16, 4), "uint8", offset_factor=1)
    with T.sblock("root"):
        T.reads(a[0:4, 0:16])
        T.writes(d[0:16, 0:4])
        for x, k in T.grid(16, 4):
            with T.sblock("copy"):
                vx, vk = T.axis.remap("SS", [x, k])
                d[vx, vk] = a[vk, vx]


@T.prim_func(s_tir=True)
def _interleave_impl(a_handle: T.handle, d_handle: T.handle) -> None:
    stride = T.int64()
    a = T.match_buffer(a_handle, (4, 16), "uint8", offset_factor=1, strides=[stride, 1])
    d = T.match_buffer(d_handle, (16, 4), "uint8", offset_factor=1)
    with T.sblock("root"):
        T.reads(a[0:4, 0:16])
        T.writes(d[0:16, 0:4])
        d[0, T.ramp(0, 1, 64)] = T.Shuffle(
            [a[0, T.ramp(0, 1, 16)], a[1, T.ramp(0, 1, 16)], a[2, T.ramp(0, 1, 16)],
             a[3, T.ramp(0, 1, 16)]],
            INTERLEAVE_4X16)


TensorIntrin.register(INTERLEAVE, _interleave_desc, _interleave_impl, override=True)


@functools.cache
def interleave_run(positions: int, padded: int) -> str:
    """Register (once) and name the intrinsic that interleaves 4 channel rows of `positions`
    bytes into `[padded, 4]` (zeros from `positions` on): whole 16-byte runs by the
    `INTERLEAVE` shuffles, the ragged end (e.g. 4 of 196 positions) byte by byte. Reading the
    input's rows in place, it needs no zero-padded copy of them. `a` spans `padded` columns
    because TIR's region of a guarded read ignores the guard; no byte past `positions` is
    read."""
    full = positions // 16 * 16
    ragged = padded != positions

    @T.prim_func(s_tir=True)
    def desc(a_handle: T.handle, d_handle: T.handle) -> None:
        stride = T.int64()
        a = T.match_buffer(a_handle, (4, padded), "uint8", offset_factor=1,
                           strides=[stride, 1])
        d = T.match_buffer(d_handle, (padded, 4), "uint8", offset_factor=1)
        with T.sblock("root"):
            T.reads(a[0:4, 0:padded])
            T.writes(d[0:padded, 0:4])
            for p, k in T.grid(padded, 4):
                with T.sblock("copy"):
                    vp, vk = T.axis.remap("SS", [p, k])
                    if ragged:
                        d[vp, vk] = T.if_then_else(vp < positions, a[vk, vp], T.uint8(0))
                    else:
                        d[vp, vk] = a[vk, vp]

    @T.prim_func(s_tir=True)
    def impl(a_handle: T.handle, d_handle: T.handle) -> None:
        stride = T.int64()
        a = T.match_buffer(a_handle, (4, padded), "uint8", offset_factor=1,
                           strides=[stride, 1])
        d = T.match_buffer(d_handle, (padded, 4), "uint8", offset_factor=1)
        with T.sblock("root"):
            T.reads(a[0:4, 0:padded])
            T.writes(d[0:padded, 0:4])
            for b in range(full // 16):
                d[b * 16, T.ramp(0, 1, 64)] = T.Shuffle(
                    [a[0, T.ramp(b * 16, 1, 16)], a[1, T.ramp(b * 16, 1, 16)],
                     a[2, T.ramp(b * 16, 1, 16)], a[3, T.ramp(b * 16, 1, 16)]],
                    INTERLEAVE_4X16)
            if ragged:
                for p, k in T.grid(padded - full, 4):
                    d[full + p, k] = T.if_then_else(full + p < positions, a[k, full + p],
                                                    T.uint8(0))

    name = f"tvmq_interleave_run_{positions}_{padded}_u8"
    TensorIntrin.register(name, desc, impl, override=True)
    return name


# `_unfolded` for 16 lanes, stride 1, in steps that stay within 16-byte lanes as AVX512BW
# shuffles do: lane L of the result (outputs 4L..4L+3: bytes 4L..4L+6 of the row) is a 16-byte
# window of the row holding those bytes (bytes 0..15 for lanes 0-2, 3..18 for lane 3), then one
# `vpshufb` picks each lane's bytes. A load, a broadcast load, a lane permute and the shuffle,
# where LLVM lowers the one-shuffle form (4 loads 1 byte apart) to ~11 shuffles.
_UNFOLD_WINDOWS = (0, 0, 0, 3)  # first byte of each lane's window
_UNFOLD_TABLE = [4 * lane + x + k - first for lane, first in enumerate(_UNFOLD_WINDOWS)
                 for x in range(4) for k in range(4)]


def _unfolded(a, lanes: int, stride: int):
    """uint8 vector [lanes x 4] whose lane x holds bytes stride*x .. stride*x+3 of `a`. Stride 1
    on 8 lanes: 4 loads 1 byte apart, interleaved; stride 2: lane x is the row's 16-bit words x
    and x+1, i.e. word x of two loads 2 bytes apart, one two-source word shuffle
    (`vpermt2w`)."""
    if (lanes, stride) == (16, 1):
        return T.reinterpret(T.call_llvm_pure_intrin(
            "int8x64", "llvm.x86.avx512.pshuf.b.512",
            T.reinterpret(T.Shuffle([a[T.ramp(first, 1, 16)] for first in _UNFOLD_WINDOWS],
                                    list(range(64))), dtype="int8x64"),
            T.Shuffle([T.ramp(T.int8(0), T.int8(1), 64)], _UNFOLD_TABLE)), dtype="uint8x64")
    if stride == 1:
        loads = [(k, lanes) for k in range(4)]  # (first byte, length)
        indices = [k * lanes + x for x in range(lanes) for k in range(4)]
    else:
        assert stride == 2
        loads = [(0, 2 * lanes), (2, 2 * lanes)]
        indices = [2 * x + k if k < 2 else 2 * lanes + 2 * x + k - 2
                   for x in range(lanes) for k in range(4)]
    return T.Shuffle([a[T.ramp(first, 1, length)] for first, length in loads], indices)


def _unfold(lanes: int, stride: int):
    """Register and name the copy taking one row to `[lanes, 4]`, lane x holding bytes
    stride*x .. stride*x+3 (`_unfolded`)."""
    span = stride * (lanes - 1) + 4  # bytes the lanes read

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((span,), "uint8", offset_factor=1),
             d: T.Buffer((lanes, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(a[0:span])
            T.writes(d[0:lanes, 0:4])
            for x, k in T.grid(lanes, 4):
                with T.sblock("copy"):
                    vx, vk = T.axis.remap("SS", [x, k])
                    d[vx, vk] = a[vx * stride + vk]

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((span,), "uint8", offset_factor=1),
             d: T.Buffer((lanes, 4), "uint8", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(a[0:span])
            T.writes(d[0:lanes, 0:4])
            d[0, T.ramp(0, 1, 4 * lanes)] = _unfolded(a, lanes, stride)

    name = f"tvmq_unfold_s{stride}_{lanes}x4_u8"
    TensorIntrin.register(name, desc, impl, override=True)
    return name


UNFOLD = _unfold(16, 1)
UNFOLD_STRIDE2 = _unfold(16, 2)
UNFOLD_HALF = _unfold(8, 1)  # rows of up to 8 outputs, two rows per 16-lane vector
UNFOLD_HALF_STRIDE2 = _unfold(8, 2)
UNFOLDS = {(16, 1): UNFOLD, (16, 2): UNFOLD_STRIDE2, (8, 1): UNFOLD_HALF,
           (8, 2): UNFOLD_HALF_STRIDE2}  # (lanes, stride)


def _vnni_unfolded(stride: int):
    """`INTRIN_STACK` on a row instead of an unfolded copy: lane x multiplies bytes
    stride*x .. stride*x+3 of `a` (`_unfolded` in registers) by the 4 broadcast weights."""
    span = 15 * stride + 4

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((span,), "uint8", offset_factor=1),
             b: T.Buffer((4,), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="global")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:span], b[0:4])
            T.writes(c[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + (T.Cast("int32", a[vi * stride + vk])
                                     * T.Cast("int32", b[vk]))

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((span,), "uint8", offset_factor=1),
             b: T.Buffer((4,), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="global")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:span], b[0:4])
            T.writes(c[0:16])
            weights = _broadcast4(b, "int8")
            c[T.ramp(T.int32(0), 1, 16)] = _vpdpbusd(
                c, T.reinterpret(_unfolded(a, 16, stride), dtype="int8x64"), weights)

    return desc, impl


# column stride -> the intrinsic's name (accumulators in a "global" stack tile)
INTRIN_UNFOLDED = {stride: f"tvmq_vnni_u8unfold_s{stride}_s8bcast_16x4" for stride in (1, 2)}
for _stride, _name in INTRIN_UNFOLDED.items():
    TensorIntrin.register(_name, *_vnni_unfolded(_stride), override=True)


INTRIN_DENSE = "tvmq_vnni_u8bcast_s8vec_16x4"


@T.prim_func(s_tir=True)
def _dense_desc(a: T.Buffer((4,), "uint8", offset_factor=1),
                b: T.Buffer((16, 4), "int8", offset_factor=1),
                c: T.Buffer((16,), "int32", offset_factor=1, scope="global")) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        for i, k in T.grid(16, 4):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                c[vi] = c[vi] + T.Cast("int32", a[vk]) * T.Cast("int32", b[vi, vk])


@T.prim_func(s_tir=True)
def _dense_impl(a: T.Buffer((4,), "uint8", offset_factor=1),
                b: T.Buffer((16, 4), "int8", offset_factor=1),
                c: T.Buffer((16,), "int32", offset_factor=1, scope="global")) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        inputs = _broadcast4(a, "uint8")
        c[T.ramp(T.int32(0), 1, 16)] = _vpdpbusd(c, inputs, b.vload([0, 0], dtype="int8x64"))


TensorIntrin.register(INTRIN_DENSE, _dense_desc, _dense_impl, override=True)


def _interleave_halves(a, b, width: int, high: bool):
    """x86 `punpckl*`/`punpckh*` on 16-byte vectors: the low (or high) halves of `a` and `b`
    interleaved in `width`-byte elements, as one two-source shuffle LLVM lowers to it."""
    first = 8 // width if high else 0
    indices = []
    for k in range(first, first + 8 // width):
        indices += [k * width + j for j in range(width)]
        indices += [16 + k * width + j for j in range(width)]
    return T.Shuffle([a, b], indices)


@functools.cache
def transposed_store(positions: int) -> str:
    """Register and name the store of a `[positions, 16]` uint8 tile (16 channels per position,
    as an epilogue vectorized over channels leaves it) into `[16, positions]` rows (NCHW):
    the 8x16 byte transpose as three rounds of byte, word and dword unpacks, then one masked
    store of `positions` bytes per channel (`llvm.masked.store`, AVX512BW's `vmovdqu8`; a
    plain 8-byte store would overwrite the next row, which another task may own)."""
    assert 1 <= positions <= 8

    @T.prim_func(s_tir=True)
    def desc(a_handle: T.handle, d_handle: T.handle) -> None:
        sa = T.int64()
        sd = T.int64()
        sy = T.int64()
        a = T.match_buffer(a_handle, (positions, 16), "uint8", strides=[sa, 1], offset_factor=1)
        d = T.match_buffer(d_handle, (16, 1, positions), "uint8", strides=[sd, sy, 1],
                           offset_factor=1)
        with T.sblock("root"):
            T.reads(a[0:positions, 0:16])
            T.writes(d[0:16, 0, 0:positions])
            for c, x in T.grid(16, positions):
                with T.sblock("store"):
                    vc, vx = T.axis.remap("SS", [c, x])
                    d[vc, 0, vx] = a[vx, vc]

    @T.prim_func(s_tir=True)
    def impl(a_handle: T.handle, d_handle: T.handle) -> None:
        sa = T.int64()
        sd = T.int64()
        sy = T.int64()
        a = T.match_buffer(a_handle, (positions, 16), "uint8", strides=[sa, 1], offset_factor=1)
        d = T.match_buffer(d_handle, (16, 1, positions), "uint8", strides=[sd, sy, 1],
                           offset_factor=1)
        with T.sblock("root"):
            T.reads(a[0:positions, 0:16])
            T.writes(d[0:16, 0, 0:positions])
            zero = T.Broadcast(T.uint8(0), 16)
            rows = [a[x, T.ramp(0, 1, 16)] for x in range(positions)] + [zero] * (8 - positions)
            # 1-, 2- and 4-byte unpack rounds: octs[k] holds channels 2k and 2k+1, 8 bytes each
            pairs = [_interleave_halves(rows[2 * i], rows[2 * i + 1], 1, high)
                     for high in (False, True) for i in range(4)]
            quads = [_interleave_halves(pairs[4 * h + 2 * i], pairs[4 * h + 2 * i + 1], 2, high)
                     for h in range(2) for high in (False, True) for i in range(2)]
            octs = [_interleave_halves(quads[2 * q], quads[2 * q + 1], 4, high)
                    for q in range(4) for high in (False, True)]
            rows_out = T.alloc_buffer((128,), "uint8", scope="local")
            rows_out[0:128] = T.Shuffle(octs, list(range(128)))  # channel c at bytes 8c..8c+7
            for c in T.unroll(16):
                T.evaluate(T.call_llvm_intrin(
                    "void", "llvm.masked.store", rows_out[T.ramp(c * 8, 1, 8)],
                    T.address_of(d[c, 0, 0]), T.ramp(0, 1, 8) < positions))

    name = f"tvmq_transposed_store_{positions}x16_u8"
    TensorIntrin.register(name, desc, impl, override=True)
    return name
