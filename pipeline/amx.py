"""Intel AMX tile multiplies for the uint8 x int8 convs of `packed_conv`.

One AMX `tdpbsud` multiplies a 16 x 64 int8 tile A by a 16 x (16 x 4) uint8 tile B into a
16 x 16 int32 tile: 16 x 16 x 64 products, where AVX512-VNNI's `vpdpbusd` does 16 x 4. In
`packed_conv2d_amx` A is 16 output channels x 64 input channels of the weight and B is the
VNNI kernels' input copy (16 rows of 4 input channels x 16 neighbouring positions), so each
accumulator tile is 16 channels x 16 positions, already in NCHW order.

TVM 0.27 has no AMX intrinsic or rule. LLVM's tile intrinsics (`llvm.x86.ldtilecfg`,
`tileloadd64`, `tdpbsud`, `tilestored64`) name fixed tile registers, so `tile_intrin` is one
tensor intrinsic for a whole block of 2 x 2 accumulator tiles (tiles 0-3) over all input
channels and kernel taps: configure the tiles, load the accumulators, then per 64 input
channels and tap load two A tiles (4, 5) and two B tiles (6, 7) and multiply each pair, and
store the accumulators back: the sums stay in tile registers throughout, and each loaded tile
feeds two multiplies. A KxK conv (stride 1) reads its input flat over the zero-padded width,
so tap (ky, kx) is just the B tile starting ky * padded width + kx positions later.

The operating system must allow a process to use the tile registers before the first tile
instruction, else it dies with SIGILL: `runner.enable_amx()` asks once per process, and the
runner does so for targets that require `amx_tile`.
"""
from __future__ import annotations

import functools

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

ROWS = 16  # output channels per tile (A rows, accumulator rows)
COLUMNS = 16  # positions per tile (accumulator columns; B rows hold 16 x 4 bytes)
DEPTH = 64  # input channels per tile multiply (A row bytes; 16 B rows of 4)
GROUP = 4  # input channels per 32-bit element of B
# ldtilecfg's 64-byte block as 8 little-endian words: palette 1; tiles 0-7 have 16 rows of
# 64 bytes (colsb: 16-bit words at bytes 16-31, rows: bytes 48-55)
_PALETTE, _COLSB, _ROWS = 1, 0x0040_0040_0040_0040, 0x1010_1010_1010_1010
BLOCK_ROWS, BLOCK_COLUMNS = 2 * ROWS, 2 * COLUMNS  # a task's 2 x 2 accumulator tiles


def intrin_name(groups: int, taps: tuple[int, int], row_stride: int) -> str:
    return f"tvmq_amx_s8u8_{groups * DEPTH}x{taps[0]}x{taps[1]}_w{row_stride}"


@functools.cache
def tile_intrin(groups: int, taps: tuple[int, int] = (1, 1), row_stride: int = 0) -> str:
    """Register (once) and name the intrinsic for a block of 2 x 2 accumulator tiles,
    `c[2, 16, 32] += A x B` over `groups` x 64 input channels and the kernel taps:
    A `[2, groups, KH, KW, 16, 64]` int8 (row = output channel), B
    `[groups * 16, 32 + (KH - 1) * row_stride + KW - 1, 4]` uint8 (row = 4 input channels
    of the positions; tap (ky, kx) reads it from column ky * row_stride + kx on)."""
    if groups < 2:  # one 64-channel group: TE drops the group loop the pattern matches
        raise ValueError(f"AMX tiles need >= 2 x 64 input channels, not {groups} x 64")
    kh, kw = taps
    rows, width = DEPTH // GROUP, BLOCK_COLUMNS
    span = width + (kh - 1) * row_stride + kw - 1  # B columns the taps read

    @T.prim_func(s_tir=True)
    def desc_pointwise(a_handle: T.handle, b_handle: T.handle, c_handle: T.handle) -> None:
        # a 1x1 conv's block has no tap loops: the same buffers, no ky/kx in the pattern
        sa0, sa1, sa2, sa3 = T.int64(), T.int64(), T.int64(), T.int64()
        sb, sc0, sc1 = T.int64(), T.int64(), T.int64()
        a = T.match_buffer(a_handle, (2, groups, 1, 1, ROWS, DEPTH), "int8", offset_factor=1,
                           strides=[sa0, sa1, sa2, sa3, DEPTH, 1])
        b = T.match_buffer(b_handle, (groups * rows, width, GROUP), "uint8", offset_factor=1,
                           strides=[sb, GROUP, 1])
        c = T.match_buffer(c_handle, (2, ROWS, width), "int32", offset_factor=1,
                           strides=[sc0, sc1, 1])
        with T.sblock("root"):
            T.reads(c[0:2, 0:ROWS, 0:width], a[0:2, 0:groups, 0, 0, 0:ROWS, 0:DEPTH],
                    b[0:groups * rows, 0:width, 0:GROUP])
            T.writes(c[0:2, 0:ROWS, 0:width])
            for u, i, j, g, r, t in T.grid(2, ROWS, width, groups, rows, GROUP):
                with T.sblock("update"):
                    vu, vi, vj, vg, vr, vt = T.axis.remap("SSSRRR", [u, i, j, g, r, t])
                    c[vu, vi, vj] = c[vu, vi, vj] + T.Cast(
                        "int32", a[vu, vg, 0, 0, vi, vr * GROUP + vt]) * T.Cast(
                        "int32", b[vg * rows + vr, vj, vt])

    @T.prim_func(s_tir=True)
    def desc_taps(a_handle: T.handle, b_handle: T.handle, c_handle: T.handle) -> None:
        sa0, sa1, sa2, sa3 = T.int64(), T.int64(), T.int64(), T.int64()
        sb, sc0, sc1 = T.int64(), T.int64(), T.int64()
        a = T.match_buffer(a_handle, (2, groups, kh, kw, ROWS, DEPTH), "int8", offset_factor=1,
                           strides=[sa0, sa1, sa2, sa3, DEPTH, 1])
        b = T.match_buffer(b_handle, (groups * rows, span, GROUP), "uint8", offset_factor=1,
                           strides=[sb, GROUP, 1])
        c = T.match_buffer(c_handle, (2, ROWS, width), "int32", offset_factor=1,
                           strides=[sc0, sc1, 1])
        with T.sblock("root"):
            T.reads(c[0:2, 0:ROWS, 0:width], a[0:2, 0:groups, 0:kh, 0:kw, 0:ROWS, 0:DEPTH],
                    b[0:groups * rows, 0:span, 0:GROUP])
            T.writes(c[0:2, 0:ROWS, 0:width])
            for u, i, j, g, y, x, r, t in T.grid(2, ROWS, width, groups, kh, kw, rows, GROUP):
                with T.sblock("update"):
                    vu, vi, vj, vg, vy, vx, vr, vt = T.axis.remap(
                        "SSSRRRRR", [u, i, j, g, y, x, r, t])
                    c[vu, vi, vj] = c[vu, vi, vj] + T.Cast(
                        "int32", a[vu, vg, vy, vx, vi, vr * GROUP + vt]) * T.Cast(
                        "int32", b[vg * rows + vr, vj + vy * row_stride + vx, vt])

    @T.prim_func(s_tir=True)
    def impl(a_handle: T.handle, b_handle: T.handle, c_handle: T.handle) -> None:
        sa0, sa1, sa2, sa3 = T.int64(), T.int64(), T.int64(), T.int64()
        sb, sc0, sc1 = T.int64(), T.int64(), T.int64()
        a = T.match_buffer(a_handle, (2, groups, kh, kw, ROWS, DEPTH), "int8", offset_factor=1,
                           strides=[sa0, sa1, sa2, sa3, DEPTH, 1])
        b = T.match_buffer(b_handle, (groups * rows, span, GROUP), "uint8", offset_factor=1,
                           strides=[sb, GROUP, 1])
        c = T.match_buffer(c_handle, (2, ROWS, width), "int32", offset_factor=1,
                           strides=[sc0, sc1, 1])
        with T.sblock("root"):
            T.reads(c[0:2, 0:ROWS, 0:width], a[0:2, 0:groups, 0:kh, 0:kw, 0:ROWS, 0:DEPTH],
                    b[0:groups * rows, 0:span, 0:GROUP])
            T.writes(c[0:2, 0:ROWS, 0:width])
            config = T.decl_buffer((8,), "uint64", scope="global")
            for w in range(8):
                config[w] = T.uint64(0)
            config[0] = T.uint64(_PALETTE)
            config[2] = T.uint64(_COLSB)
            config[3] = T.uint64(_COLSB)
            config[6] = T.uint64(_ROWS)
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg",
                                          T.address_of(config[0])))
            for u in T.unroll(2):
                for v in T.unroll(2):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.int8(u * 2 + v),
                        T.address_of(c[u, 0, v * COLUMNS]), T.int64(sc1 * 4)))
            for g, y, x in T.grid(groups, kh, kw):
                for u in T.unroll(2):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.int8(4 + u),
                        T.address_of(a[u, g, y, x, 0, 0]), T.int64(DEPTH)))
                for v in T.unroll(2):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.int8(6 + v),
                        T.address_of(b[g * rows, v * COLUMNS + y * row_stride + x, 0]),
                        T.int64(sb)))
                for u in T.unroll(2):
                    for v in T.unroll(2):
                        T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbsud",
                                                      T.int8(u * 2 + v), T.int8(4 + u),
                                                      T.int8(6 + v)))
            for u in T.unroll(2):
                for v in T.unroll(2):
                    T.evaluate(T.call_llvm_intrin(
                        "void", "llvm.x86.tilestored64", T.int8(u * 2 + v),
                        T.address_of(c[u, 0, v * COLUMNS]), T.int64(sc1 * 4)))

    name = intrin_name(groups, taps, row_stride)
    desc = desc_taps if kh * kw > 1 else desc_pointwise
    TensorIntrin.register(name, desc, impl, override=True)
    return name
