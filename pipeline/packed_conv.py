"""Convolutions with weights packed at build time, in the layout fast CPU kernels need.

Relax's `conv2d` legalizes to TOPI's NCHW loop nest, which no default schedule makes fast.
`pack_convolutions` replaces each NCHW conv2d (groups 1, or depthwise) whose weight is a model
parameter by our own compute, with the weight re-laid out once by the build stage (numpy,
stored in the built `model.params`):

- float32: weight `[O/8, I, KH, KW, 8]`; for stride-1 convs the input is copied once as
  zero-padded rows `[I, H+pad, OWp+KW-1]` (OWp = OW rounded up to 16), and kernel column kx
  reads the row shifted by kx, so 16 neighbouring outputs are one contiguous vector load and
  8 output channels are 8 broadcast weights. Strided convs copy each kernel column apart
  (`[I, H+pad, KW, OWp]`, stride folded in).
- uint8 x int8 -> int32: weight `[O/8, I/4, KH, KW, 8, 4]`, input `[I/4, H+pad, columns, 4]`:
  4 input channels of 16 neighbouring outputs are one 64-byte vector and 4 weight bytes one
  broadcast, which is exactly what AVX512-VNNI's `vpdpbusd` multiplies and accumulates. For
  stride-1 rows the copy is a zero-padded input plus vector shuffles (`vnni.INTERLEAVE`).
- 1x1 convs and small maps (`flat_maps`) use a flat position axis instead of rows; uint8 1x1
  stride-1 convs read their input as `[C, H*W]` (a reshape: no copy) and interleave it from
  there (`packed_pointwise_u8s8`; on maps such as 7x7 output channels in lanes instead,
  `packed_pointwise_tiles_u8s8`). Depthwise convs keep their weight and copy padded rows split
  by column phase; uint8 ones with column stride 1 or 2 unfold the rows instead, 4 kernel
  columns per int32 lane (`packed_depthwise2d_u8s8`; rows of up to 8 outputs two per vector).
- uint8 x int8 on targets with AMX (`amx_conv`: more than 64 input and output channels, 1x1
  or stride-1 KxK): weight `[O/16, I/64, KH, KW, 16, 64]`, the same flat input copy,
  multiplied on AMX tiles (`packed_conv2d_amx`, `amx.tile_intrin`).
- Dense layers (`matmul` with a [K, N] weight parameter, e.g. the classifier head): float32
  weight `[N/16, K, 16]`, one input broadcast against 16 output columns; uint8 x int8 weight
  `[N/16, K/4, 16, 4]`, 4 input bytes broadcast against 16 columns (`vnni.INTRIN_DENSE`).

Activations stay NCHW between layers (the copy is part of the conv kernel), so every other op
and the quantizer's epilogues are unchanged. The arithmetic is the same sum per output
(int8: exactly; float32: same order), so results match the generic build; the schedule that
makes it fast is `schedules.PackedConvSchedule`.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

from .relax_io import ENTRY, num_inputs
from .vnni import UNFOLDS

LANES = 16  # neighbouring output columns per vector
OC_BLOCK = 8  # output channels per register tile
IC_GROUP = 4  # input channels per vpdpbusd lane (uint8 x int8)
CONV_BLOCK = "tvmq_conv"
DENSE_BLOCK = "tvmq_dense"
PACK_BLOCK = "tvmq_pack"
CROP_BLOCK = "tvmq_crop"
ROWS_BLOCK = "tvmq_rows"  # flat sums back to rows (`FLAT_HALF_ROWS`)
PAD_BLOCK = "tvmq_pad"
TRANSPOSE_BLOCK = "tvmq_transpose"  # an NHWC input to NCHW rows, before `PAD_BLOCK`
WIDE_WEIGHT_BLOCK = "tvmq_wide_weight"
INTERLEAVE_ATTR = "tvmq.interleave"  # the copy is 4 channels' contiguous runs, interleaved
TILE_ATTR = "tvmq.channel_tile"  # output channels per register tile, read by the schedule
PACK_IN_TILE_ATTR = "tvmq.pack_in_tile"  # each channel tile copies its own input rows
UNFOLD_ATTR = "tvmq.unfold"  # the copy is one row's overlapping 4-column windows
VNNI_ATTR = "tvmq.vnni"  # innermost reduction = 4 uint8 x int8 products per int32 lane
FLAT_ATTR = "tvmq.flat"  # output map laid flat: loops (n, channel, position) instead of (.., y, x)
FLAT_PADDED = 2  # FLAT_ATTR value when the flat map runs over the padded width (p = y * WP + x)
FLAT_HALF_ROWS = 3  # FLAT_ATTR value for rows of up to 8 outputs laid 8 apart (p = y * 8 + x)
UNFOLD_LANES_ATTR = "tvmq.unfold_lanes"  # lanes per unfolded row, if not LANES
ROW_ATTR = "tvmq.row"  # a flat zero-padded copy over rows of this width (y * width + x)
RUN_ATTR = "tvmq.run"  # the copy interleaves the input's rows of this many positions in place
POSITION_TILE_ATTR = "tvmq.position_tile"  # output channels in lanes, this many positions per tile
AMX_ATTR = "tvmq.amx"  # AMX tiles (`amx.tile_intrin`); the value: row stride of KxK taps, or 0

KERNEL_NAMES = ("packed_conv2d_f32", "packed_conv2d_u8s8", "packed_depthwise2d",
                "packed_dense_u8s8", "packed_dense_f32", "packed_conv2d_amx", "packed_max_pool2d")
FLOAT = ("float32", "float32", "float32")
U8S8 = ("uint8", "int8", "int32")


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def oc_block(channels: int) -> int:
    return next(b for b in (OC_BLOCK, 4, 2, 1) if channels % b == 0)


def pack_weight(weight: np.ndarray, int8: bool) -> np.ndarray:
    """OIHW -> [O/ob, I, KH, KW, ob] (float) or [O/ob, I/4, KH, KW, ob, 4] (int8, I zero-padded)."""
    o, i, kh, kw = weight.shape
    ob = oc_block(o)
    if not int8:
        return np.ascontiguousarray(weight.reshape(o // ob, ob, i, kh, kw).transpose(0, 2, 3, 4, 1))
    ip = _ceil(i, IC_GROUP)
    padded = np.zeros((o, ip, kh, kw), weight.dtype)
    padded[:, :i] = weight
    blocks = padded.reshape(o // ob, ob, ip // IC_GROUP, IC_GROUP, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def pack_dense_weight(weight: np.ndarray, int8: bool) -> np.ndarray:
    """[K, N] -> float32 [N/16, K, 16] or int8 [N/16, K/4, 16, 4] (N and K zero-padded): 16
    output columns per vector (int8: x 4 inputs, the `vnni.INTRIN_DENSE` operand)."""
    k, n = weight.shape
    group = IC_GROUP if int8 else 1
    padded = np.zeros((_ceil(k, group), _ceil(n, LANES)), weight.dtype)
    padded[:k, :n] = weight
    blocks = padded.reshape(-1, group, padded.shape[1] // LANES, LANES)
    packed = np.ascontiguousarray(blocks.transpose(2, 0, 3, 1))
    return packed if int8 else packed[..., 0]


def packed_dense(data: te.Tensor, weight: te.Tensor, columns: int):
    """[M, K] x packed weight -> [M, columns], 16 output columns per vector: float32 one FMA
    per input (broadcast); uint8 x int8 -> int32 one `vpdpbusd` per 4 inputs (the input bytes
    broadcast)."""
    m, k = (int(d) for d in data.shape)
    blocks, groups = (int(d) for d in weight.shape[:2])
    if str(data.dtype) == "float32":
        rk = te.reduce_axis((0, k), "rk")
        acc = te.compute((m, blocks * LANES), lambda mm, n: te.sum(
            data[mm, rk] * weight[n // LANES, rk, n % LANES], axis=[rk]), name=DENSE_BLOCK)
        return te.compute((m, columns), lambda mm, n: acc[mm, n], name=CROP_BLOCK)
    packed = te.compute(
        (m, groups, IC_GROUP),
        lambda mm, g, i: tirx.if_then_else(g * IC_GROUP + i < k, data[mm, g * IC_GROUP + i],
                                           tirx.const(0, data.dtype)),
        name=PACK_BLOCK)
    rg, ri = te.reduce_axis((0, groups), "rg"), te.reduce_axis((0, IC_GROUP), "ri")
    acc = te.compute((m, blocks * LANES), lambda mm, n: te.sum(
        packed[mm, rg, ri].astype("int32") * weight[n // LANES, rg, n % LANES, ri].astype("int32"),
        axis=[rg, ri]), name=DENSE_BLOCK)
    return te.compute((m, columns), lambda mm, n: acc[mm, n], name=CROP_BLOCK)


def _map_shape(data: te.Tensor, channels_last: bool) -> tuple[int, int, int, int]:
    """(N, C, H, W) of an NCHW, or with `channels_last` NHWC, input."""
    if channels_last:
        n, h, w, c = (int(d) for d in data.shape)
        return n, c, h, w
    n, c, h, w = (int(d) for d in data.shape)
    return n, c, h, w


def guarded_load(data: te.Tensor, nn, ch, y, x, valid=True, branch: bool = False, fill=None,
                 channels_last: bool = False):
    """data[nn, ch, y, x] where (ch, y, x) is inside `data` and `valid`, else 0 (or `fill`);
    with `channels_last`, `data` is NHWC and the element is data[nn, y, x, ch].

    By default without a branch: the indices are clamped into range and the value selected, so
    the float conv copies vectorize (fp32 convs 1.5x faster on EfficientNet-Lite0). `branch`
    keeps if-then-else: faster for the uint8 copies and all depthwise copies, whose schedule
    leaves a contiguous row loop to LLVM, which vectorizes it with masked loads.
    """
    _, c, h, w = _map_shape(data, channels_last)
    inside = tirx.all(y >= 0, y < h, x >= 0, x < w, ch < c, valid)
    zero = tirx.const(0 if fill is None else fill, data.dtype)

    def load(ch, y, x):
        return data[nn, y, x, ch] if channels_last else data[nn, ch, y, x]

    if branch:
        return tirx.if_then_else(inside, load(ch, y, x), zero)

    def clamp(v, extent):
        return tirx.max(tirx.min(v, extent - 1), 0)

    return tirx.Select(inside, load(clamp(ch, c), clamp(y, h), clamp(x, w)), zero)


def flat_padded_copy(data: te.Tensor, padding, channels: int, length: int) -> te.Tensor:
    """The zero-padded map laid flat over its padded width WP, `[N, 1, channels, length]`:
    position q is padded row q // WP, column q % WP (zeros past the map and past `data`'s
    channels). The first step of the uint8 copies that are flat over the padded width; its
    `ROW_ATTR` lets the schedule loop over rows and columns instead of dividing."""
    n, _, _, w = (int(d) for d in data.shape)
    top, left, _, right = padding
    wp = w + left + right
    return te.compute(
        (n, 1, channels, length),
        lambda nn, _, ch, q: guarded_load(data, nn, ch, q // wp - top, q % wp - left, True,
                                          branch=True),
        name=PAD_BLOCK, attrs={ROW_ATTR: wp})


def flat_maps(out_width: int) -> bool:
    """Small maps (e.g. 7x7): a vector of 16 would hold one short row, mostly padding; such
    convs (and all 1x1 convs, whose copy is then just the input) lay the whole output map flat
    (position = y * OW + x) and copy full KHxKW windows. Larger KxK maps keep rows: a full
    window copy would be KH*KW times the input (measured 1.5-3x slower at 56x56 and 28x28)."""
    return 4 * out_width < 3 * _ceil(out_width, LANES)


def packed_conv2d(data: te.Tensor, weight: te.Tensor, strides, padding, int8: bool,
                  channels_last: bool = False):
    """NCHW conv2d from a packed weight; output NCHW (float32, or int32 for uint8 x int8).
    With `channels_last` the input is NHWC (a model's image input; float32 only): the copy
    transposes it.

    The input copy is `[C, H+pad, OWp+KW-1 (rounded up to 16)]` for stride 1 (kernel column
    kx reads the padded row from column x + kx), `[C, H+pad, KW, OWp]` for strided rows
    (`_phase_split_rows`' `[C, H+pad, SW, ...]` for strided rows of an NHWC input), or for
    `flat_maps` `[C, KH, KW, OH*OW rounded up to 16]`; uint8 adds an innermost axis of 4 input
    channels. Either way the 16 lanes of a vector are neighbouring outputs.
    """
    if channels_last and int8:
        raise ValueError("packed_conv2d: channels_last is for float32 inputs")
    n, c, h, w = _map_shape(data, channels_last)
    ocb, icb, kh, kw, ob = (int(d) for d in weight.shape[:5])
    sh, sw = strides
    top, left, bottom, right = padding
    oh = (h + top + bottom - kh) // sh + 1
    ow = (w + left + right - kw) // sw + 1
    flat = kh == kw == 1 or flat_maps(ow)

    def source(nn, ch, y, x, valid):
        y, x = y - top, x - left
        return guarded_load(data, nn, ch, y, x, valid, branch=int8, channels_last=channels_last)

    # uint8, stride 1, small maps (7x7): the output laid flat over the padded width
    # (p = y * WP + x, columns x >= OW discarded), so kernel tap (ky, kx) reads the zero-padded
    # input, itself flat, from p + ky * WP + kx: one interleaved copy of the input instead of a
    # KHxKW window gather (ResNet50's 7x7 3x3 conv 1.3x; at 14x14 rows stay faster).
    wp = w + left + right
    padded_flat = int8 and sh == sw == 1 and kh * kw > 1 and flat_maps(ow)
    flat = flat or padded_flat
    shifted = not flat and sw == 1
    phase_split = channels_last and not (flat or shifted)  # strided rows of an NHWC input
    row_stride = wp if padded_flat else ow  # of the flat output
    if padded_flat:
        pp = _ceil(oh * wp, LANES)
        length = _ceil(pp + (kh - 1) * wp + kw - 1, LANES)  # what the last tap reads
        copy_shape, out_shape = (1, 1, length), (n, ocb * ob, pp)  # `flat_padded_copy`

        def tap(ry, rx, out):
            return (0, 0, out[0] + ry * wp + rx)
    elif flat:  # copy [ch, ky, kx, p]; output position p = y * ow + x
        pp = _ceil(oh * ow, LANES)
        copy_shape, out_shape = (kh, kw, pp), (n, ocb * ob, pp)

        def window(nn, ch, ky, kx, p):
            return source(nn, ch, p // ow * sh + ky, p % ow * sw + kx, p < oh * ow)

        def tap(ry, rx, out):  # copy index of output `out` (p) and kernel tap (ry, rx)
            return (ry, rx, out[0])
    elif shifted:  # copy [ch, row, column]: kernel column kx reads the row shifted by kx
        owp = pp = _ceil(ow, LANES)
        columns = _ceil(owp + kw - 1, LANES)
        copy_shape, out_shape = (h + top + bottom, columns), (n, ocb * ob, oh, owp)

        def window(nn, ch, yp, xq):
            return source(nn, ch, yp, xq, True)

        def tap(ry, rx, out):
            return (out[0] * sh + ry, out[1] + rx)
    elif phase_split:  # `_phase_split_rows`: [ch, row, phase, x]
        owp = pp = _ceil(ow, LANES)
        out_shape = (n, ocb * ob, oh, owp)

        def tap(ry, rx, out):
            return (out[0] * sh + ry, rx % sw, out[1] + rx // sw)
    else:  # copy [ch, row, kx, x]
        owp = pp = _ceil(ow, LANES)
        copy_shape, out_shape = (h + top + bottom, kw, owp), (n, ocb * ob, oh, owp)

        def window(nn, ch, yp, kx, xp):
            return source(nn, ch, yp, xp * sw + kx, xp < ow)

        def tap(ry, rx, out):
            return (out[0] * sh + ry, rx, out[1])

    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    # FLAT_ATTR: 0 rows, 1 flat (p = y * OW + x), 2 flat over the padded width
    attrs = {TILE_ATTR: ob, FLAT_ATTR: int(flat) + int(padded_flat)}
    if int8 and (shifted or padded_flat):
        # Contiguous runs: zero-pad the input once ([row, channel, column]), then interleave 4
        # channels' 16-byte runs into 64 bytes with vector shuffles. (1x1 stride-1 convs
        # interleave their input in place: `packed_pointwise_u8s8`.)
        if padded_flat:
            padded = flat_padded_copy(data, padding, icb * IC_GROUP, copy_shape[-1])
        else:
            padded = te.compute((n, copy_shape[0], icb * IC_GROUP, copy_shape[1]),
                                lambda nn, yp, ch, xq: window(nn, ch, yp, xq), name=PAD_BLOCK)
        packed = te.compute(
            (n, icb, *copy_shape, IC_GROUP),
            lambda nn, cb, a, *rest: padded[nn, 0 if padded_flat else a, cb * IC_GROUP + rest[-1],
                                            rest[-2]],
            name=PACK_BLOCK, attrs={INTERLEAVE_ATTR: 1})
    elif int8:
        packed = te.compute((n, icb, *copy_shape, IC_GROUP),
                            lambda nn, cb, *rest: window(nn, cb * IC_GROUP + rest[-1], *rest[:-1]),
                            name=PACK_BLOCK)
    if int8:
        rc, rk = te.reduce_axis((0, icb), "rc"), te.reduce_axis((0, IC_GROUP), "rk")
        acc = te.compute(out_shape, lambda nn, o, *out: te.sum(
            packed[(nn, rc, *tap(ry, rx, out), rk)].astype("int32")
            * weight[o // ob, rc, ry, rx, o % ob, rk].astype("int32"), axis=[rc, ry, rx, rk]),
            name=CONV_BLOCK, attrs={**attrs, VNNI_ATTR: 1})
    else:
        if phase_split:
            # An NHWC image input into strided rows: transposed into zero-padded rows, then
            # split by column phase (`_phase_split_rows`), instead of a gather with a stride
            # of 2 pixels for each kernel column.
            nchw = te.compute((n, c, h, w), lambda nn, ch, y, x: data[nn, y, x, ch],
                              name=TRANSPOSE_BLOCK)
            packed, _ = _phase_split_rows(nchw, (kh, kw), strides, padding)
        else:
            packed = te.compute((n, c, *copy_shape), window, name=PACK_BLOCK)
        rc = te.reduce_axis((0, c), "rc")
        acc = te.compute(out_shape, lambda nn, o, *out: te.sum(
            packed[(nn, rc, *tap(ry, rx, out))] * weight[o // ob, rc, ry, rx, o % ob],
            axis=[rc, ry, rx]), name=CONV_BLOCK, attrs=attrs)
    if flat:
        return te.compute((n, ocb * ob, oh, ow),
                          lambda nn, o, y, x: acc[nn, o, y * row_stride + x], name=CROP_BLOCK)
    return te.compute((n, ocb * ob, oh, ow), lambda nn, o, y, x: acc[nn, o, y, x], name=CROP_BLOCK)


def pointwise_input(call) -> bool:
    """A uint8 x int8 1x1 conv, stride 1, no padding, input channels a multiple of 4: what
    `packed_pointwise_u8s8` computes from the input reshaped to `[N, C, H*W]`."""
    a = call.attrs
    _, c, kh, kw = (int(d) for d in call.args[1].ty.shape)
    return (_dtypes(call) == U8S8 and kh == kw == 1 and c % IC_GROUP == 0
            and all(int(d) == 1 for d in a.strides) and not any(int(p) for p in a.padding))


def interleaved_in_place(data: te.Tensor, padded: int) -> te.Tensor:
    """`[N, C, positions]` uint8 (C a multiple of 4) -> `[N, C/4, padded, 4]`, zeros past the
    positions: the VNNI/AMX operand layout, scheduled as `vnni.interleave_run` per 4 rows."""
    n, c, positions = (int(d) for d in data.shape)

    def copy(nn, cb, p, i):
        value = data[nn, cb * IC_GROUP + i, p]
        if padded == positions:
            return value
        return tirx.if_then_else(p < positions, value, tirx.const(0, data.dtype))

    return te.compute((n, c // IC_GROUP, padded, IC_GROUP), copy, name=PACK_BLOCK,
                      attrs={INTERLEAVE_ATTR: 1, RUN_ATTR: positions})


def packed_pointwise_u8s8(data: te.Tensor, weight: te.Tensor, height: int, width: int):
    """uint8 x int8 -> int32 1x1 conv (stride 1, no padding) of an input viewed flat,
    `[N, C, H*W]`, from `pack_weight`'s weight; output NCHW.

    The copy is `packed_conv2d`'s flat one, `[C/4, positions (rounded up to 16), 4]`, made
    by interleaving 4 channels' rows read in place (`vnni.interleave_run`; zeros past H*W): no
    zero-padded copy first, and on ragged maps (14x14, 7x7) no byte gather (EfficientNet-Lite0's
    480 -> 80 at 14x14 1.4x alone).
    """
    n, _, positions = (int(d) for d in data.shape)
    ocb, icb, _, _, ob = (int(d) for d in weight.shape[:5])
    pp = _ceil(positions, LANES)
    packed = interleaved_in_place(data, pp)
    rc, rk = te.reduce_axis((0, icb), "rc"), te.reduce_axis((0, IC_GROUP), "rk")
    acc = te.compute((n, ocb * ob, pp), lambda nn, o, p: te.sum(
        packed[nn, rc, p, rk].astype("int32")
        * weight[o // ob, rc, 0, 0, o % ob, rk].astype("int32"), axis=[rc, rk]),
        name=CONV_BLOCK, attrs={TILE_ATTR: ob, FLAT_ATTR: 1, VNNI_ATTR: 1})
    return te.compute((n, ocb * ob, height, width),
                      lambda nn, o, y, x: acc[nn, o, y * width + x], name=CROP_BLOCK)


TILE_POSITIONS = (7, 6, 5, 4)  # channel-lane register tiles: positions x 32 channels


def _dividing_tile(extent: int) -> int:
    """The largest channel-lane tile that divides `extent` positions, or 0."""
    return next((t for t in TILE_POSITIONS if extent % t == 0), 0)


def position_tile(call) -> int:
    """Positions per register tile for `packed_pointwise_tiles_u8s8`, or 0: a map of fewer
    than 64 positions that 16-lane position vectors would fill unevenly (7x7: 49 in 64 lanes)
    and that splits into tiles of 4 to 7 positions."""
    _, _, h, w = (int(d) for d in call.args[0].ty.shape)
    positions = h * w
    if positions >= 4 * LANES or positions % LANES == 0:
        return 0
    return _dividing_tile(positions)


def pack_pointwise_weight(weight: np.ndarray) -> np.ndarray:
    """int8 OIHW 1x1 [O, C, 1, 1] -> [O/16, C/4, 16, 4], `pack_dense_weight`'s layout: 16
    output channels x 4 input channels per vector (`packed_pointwise_tiles_u8s8`)."""
    return pack_dense_weight(np.ascontiguousarray(weight[:, :, 0, 0].T), int8=True)


def packed_pointwise_tiles_u8s8(data: te.Tensor, weight: te.Tensor, height: int, width: int,
                                out_channels: int, tile: int):
    """uint8 x int8 -> int32 1x1 conv of a small map viewed flat (`[N, C, H*W]`), output
    channels in the vector lanes: each position's 4 input bytes broadcast against 16 output
    channels x 4 weight bytes (`vnni.INTRIN_DENSE`), `tile` positions x 32 channels per
    register tile. No lane idles on a 7x7 map, where position vectors use 49 of 64 lanes.

    The input is `interleaved_in_place`'s copy `[C/4, positions, 4]`: 4 bytes per position
    and channel group, the broadcast operand. The sums come out position-major; the epilogue
    stores them back NCHW."""
    n, _, positions = (int(d) for d in data.shape)
    blocks, groups = (int(d) for d in weight.shape[:2])
    packed = interleaved_in_place(data, _ceil(positions, LANES))
    rc, rk = te.reduce_axis((0, groups), "rc"), te.reduce_axis((0, IC_GROUP), "rk")
    acc = te.compute((n, positions, blocks * LANES), lambda nn, p, o: te.sum(
        packed[nn, rc, p, rk].astype("int32")
        * weight[o // LANES, rc, o % LANES, rk].astype("int32"), axis=[rc, rk]),
        name=CONV_BLOCK, attrs={POSITION_TILE_ATTR: tile, VNNI_ATTR: 1})
    return te.compute((n, out_channels, height, width),
                      lambda nn, o, y, x: acc[nn, y * width + x, o], name=CROP_BLOCK)


def conv_tile(call) -> int:
    """Positions per register tile for `packed_conv2d_tiles_u8s8`, or 0: a uint8 KxK conv
    (groups 1, stride 1, output channels a multiple of 16) over rows that 16-lane position
    vectors fill unevenly (7x7 maps flat over the padded width: 49 of 64 lanes; rows of 14,
    28, 56: 14 of 16) and that split into tiles of 4 to 7 positions. Alone against the
    position-lane kernel: ResNet50's 3x3 convs at 7x7 1.31x, 14x14 1.13x, 28x28 1.09x, 56x56
    1.04x; rows of 16 or 32, which fill whole vectors, 0.93-0.97x (not taken)."""
    a = call.attrs
    out_channels, _, kh, kw = (int(d) for d in call.args[1].ty.shape)
    out_width = int(call.ty.shape[3])
    if (_dtypes(call) != U8S8 or int(a.groups) != 1 or kh * kw == 1
            or any(int(d) != 1 for d in a.strides)
            or out_width % LANES == 0 or out_channels % LANES):
        return 0
    return _dividing_tile(out_width)


def pack_tile_weight(weight: np.ndarray) -> np.ndarray:
    """int8 OIHW [O, C, KH, KW] -> [O/16, C/4, KH, KW, 16, 4] (O, C zero-padded): per kernel
    tap, 16 output channels x 4 input channels per vector (`packed_conv2d_tiles_u8s8`)."""
    o, i, kh, kw = weight.shape
    padded = np.zeros((_ceil(o, LANES), _ceil(i, IC_GROUP), kh, kw), weight.dtype)
    padded[:o, :i] = weight
    blocks = padded.reshape(-1, LANES, padded.shape[1] // IC_GROUP, IC_GROUP, kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def packed_conv2d_tiles_u8s8(data: te.Tensor, weight: te.Tensor, padding, out_channels: int,
                             tile: int):
    """uint8 x int8 -> int32 KxK stride-1 conv with output channels in the vector lanes, as
    `packed_pointwise_tiles_u8s8` for 1x1 convs: tiles of `tile` neighbouring positions of
    one output row x 32 channels; each tap broadcasts a position's 4 input bytes against 16
    channels x 4 weight bytes. The input is the zero-padded map laid flat over its padded
    width and interleaved by 4 channels (`[C/4, rows * WP, 4]`, as the 7x7 position-lane
    kernel copies it), so tap (ky, kx) of output (y, x) is position (y + ky) * WP + x + kx."""
    n, c, h, w = (int(d) for d in data.shape)
    blocks, groups, kh, kw = (int(d) for d in weight.shape[:4])
    top, left, bottom, right = padding
    wp, rows = w + left + right, h + top + bottom
    oh, ow = rows - kh + 1, wp - kw + 1
    length = _ceil(rows * wp, LANES)
    padded = flat_padded_copy(data, padding, groups * IC_GROUP, length)
    packed = te.compute((n, groups, length, IC_GROUP),
                        lambda nn, cb, q, i: padded[nn, 0, cb * IC_GROUP + i, q],
                        name=PACK_BLOCK, attrs={INTERLEAVE_ATTR: 1})
    rc, ry, rx, rk = (te.reduce_axis((0, e), name) for e, name in (
        (groups, "rc"), (kh, "ry"), (kw, "rx"), (IC_GROUP, "rk")))
    acc = te.compute((n, oh * ow, blocks * LANES), lambda nn, p, o: te.sum(
        packed[nn, rc, (p // ow + ry) * wp + p % ow + rx, rk].astype("int32")
        * weight[o // LANES, rc, ry, rx, o % LANES, rk].astype("int32"), axis=[rc, ry, rx, rk]),
        name=CONV_BLOCK, attrs={POSITION_TILE_ATTR: tile, VNNI_ATTR: 1})
    return te.compute((n, out_channels, oh, ow),
                      lambda nn, o, y, x: acc[nn, y * ow + x, o], name=CROP_BLOCK)


def pack_amx_weight(weight: np.ndarray) -> np.ndarray:
    """int8 OIHW -> [O/16, I/64, KH, KW, 16, 64] (O zero-padded to 32, I to 64): per 16 output
    channels, 64 input channels and tap, AMX's A tile (row = output channel)."""
    from .amx import BLOCK_ROWS, DEPTH, ROWS

    o, i, kh, kw = weight.shape
    padded = np.zeros((_ceil(o, BLOCK_ROWS), _ceil(i, DEPTH), kh, kw), weight.dtype)
    padded[:o, :i] = weight
    blocks = padded.reshape(padded.shape[0] // ROWS, ROWS, padded.shape[1] // DEPTH, DEPTH,
                            kh, kw)
    return np.ascontiguousarray(blocks.transpose(0, 2, 4, 5, 1, 3))


def packed_conv2d_amx(data: te.Tensor, weight: te.Tensor, strides, padding, out_channels: int,
                      map_shape: tuple[int, int] | None = None):
    """uint8 x int8 -> int32 conv on AMX tiles, from `pack_amx_weight`'s weight: 1x1 convs
    without padding (any stride) and KxK convs with stride 1.

    The input copy is the VNNI kernels' flat one, `[I/4, positions, 4]`: 16 rows of it
    (64 input channels) x 16 positions are AMX's B tile, the weight's 16 output channels x
    64 input channels its A tile, so an accumulator tile (`[O/16, 16, positions]`) is 16
    output channels x 16 neighbouring positions: the NCHW order the epilogue writes, no
    transpose anywhere. KxK convs lay the zero-padded input flat over its padded width WP and
    compute the output over that width too (position y * WP + x, columns x >= OW dropped), so
    tap (ky, kx) reads the copy ky * WP + kx positions later. Positions are padded to 32 and
    output channels to 32: each task fills 2 x 2 accumulator tiles. A 1x1 stride-1 conv over
    a multiple of 64 input channels gets its input viewed flat, `[N, C, H*W]`, with
    `map_shape` = (H, W), and interleaves it in place (`interleaved_in_place`).
    """
    from .amx import BLOCK_COLUMNS, DEPTH, ROWS

    if map_shape is not None:
        n, c, _ = (int(d) for d in data.shape)
        h, w = map_shape
    else:
        n, c, h, w = (int(d) for d in data.shape)
    blocks, groups, kh, kw = (int(d) for d in weight.shape[:4])
    sh, sw = strides
    top, left, bottom, right = padding
    oh = (h + top + bottom - kh) // sh + 1
    ow = (w + left + right - kw) // sw + 1
    channel_groups = groups * DEPTH // IC_GROUP
    taps = kh * kw > 1
    row_stride = w + left + right if taps else ow  # of the flat output
    pp = _ceil(oh * row_stride, BLOCK_COLUMNS)
    if map_shape is not None:
        padded, packed = None, interleaved_in_place(data, pp)
    elif taps:  # stride 1: the padded input flat, long enough for the last tap of the last block
        length = _ceil(pp + (kh - 1) * row_stride + kw - 1, LANES)
        padded = te.compute(
            (n, 1, channel_groups * IC_GROUP, length),
            lambda nn, _, ch, q: guarded_load(data, nn, ch, q // row_stride - top,
                                              q % row_stride - left, branch=True),
            name=PAD_BLOCK, attrs={ROW_ATTR: row_stride})
    elif sh == sw == 1 and pp == oh * ow and c % IC_GROUP == 0:  # contiguous runs
        length = pp
        padded = te.compute(
            (n, 1, channel_groups * IC_GROUP, pp),
            lambda nn, _, ch, p: guarded_load(data, nn, ch, p // ow, p % ow, branch=True),
            name=PAD_BLOCK)
    else:
        padded = None
    if padded is not None:  # interleave 4 channels' runs with vector shuffles
        packed = te.compute((n, channel_groups, length, IC_GROUP),
                            lambda nn, cb, q, i: padded[nn, 0, cb * IC_GROUP + i, q],
                            name=PACK_BLOCK, attrs={INTERLEAVE_ATTR: 1})
    elif map_shape is None:  # strided or ragged 1x1: gathered
        packed = te.compute(
            (n, channel_groups, pp, IC_GROUP),
            lambda nn, cb, p, i: guarded_load(data, nn, cb * IC_GROUP + i, p // ow * sh,
                                              p % ow * sw, p < oh * ow, branch=True),
            name=PACK_BLOCK)
    rows = DEPTH // IC_GROUP
    rg, rr, rt = (te.reduce_axis((0, e), name) for e, name in (
        (groups, "rg"), (rows, "rr"), (IC_GROUP, "rt")))
    if taps:
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        acc = te.compute(
            (n, blocks, ROWS, pp),
            lambda nn, ob, oi, p: te.sum(
                weight[ob, rg, ry, rx, oi, rr * IC_GROUP + rt].astype("int32")
                * packed[nn, rg * rows + rr, p + ry * row_stride + rx, rt].astype("int32"),
                axis=[rg, ry, rx, rr, rt]),
            name=CONV_BLOCK, attrs={AMX_ATTR: row_stride})
    else:
        acc = te.compute(
            (n, blocks, ROWS, pp),
            lambda nn, ob, oi, p: te.sum(
                weight[ob, rg, 0, 0, oi, rr * IC_GROUP + rt].astype("int32")
                * packed[nn, rg * rows + rr, p, rt].astype("int32"),
                axis=[rg, rr, rt]),
            name=CONV_BLOCK, attrs={AMX_ATTR: 0})
    return te.compute((n, out_channels, oh, ow),
                      lambda nn, o, y, x: acc[nn, o // ROWS, o % ROWS, y * row_stride + x],
                      name=CROP_BLOCK)


AMX_MIN_CHANNELS = 64  # inputs and outputs must both exceed it; see amx_conv


def amx_conv(call) -> bool:
    """A uint8 x int8 conv (groups 1) with more than 64 input and output channels, 1x1 without
    padding or KxK with stride 1: what `packed_conv2d_amx` computes. Measured on an AMX host
    against the VNNI kernels, 2 threads, one process per run: 1x1 convs from 112 outputs and
    128 inputs on 1.04-2.2x over four runs (a strided one to 80 outputs 0.75x); 3x3 convs over
    128 to 512 channels 1.6-3.2x. With 64 outputs or inputs or fewer (each input byte used
    24-64 times, or one 64-channel step per tile) an earlier version of these kernels measured
    0.54-0.94x: such convs keep VNNI."""
    a = call.attrs
    shape = call.args[1].ty.shape
    pointwise = int(shape[2]) == int(shape[3]) == 1 and not any(int(p) for p in a.padding)
    return (_dtypes(call) == U8S8 and int(a.groups) == 1
            and int(shape[0]) > AMX_MIN_CHANNELS and int(shape[1]) > AMX_MIN_CHANNELS
            and (pointwise or all(int(d) == 1 for d in a.strides)))


def pack_depthwise_weight(weight: np.ndarray) -> np.ndarray:
    """int8 [C, 1, KH, KW] -> [C, KH, ceil(KW/4), 4]: kernel columns in groups of 4 (zero past
    KW), the broadcast operand of one `vpdpbusd` per group (`packed_depthwise2d_u8s8`)."""
    c, _, kh, kw = weight.shape
    packed = np.zeros((c, kh, _ceil(kw, IC_GROUP)), weight.dtype)
    packed[:, :, :kw] = weight[:, 0]
    return np.ascontiguousarray(packed.reshape(c, kh, -1, IC_GROUP))


def packed_depthwise2d_u8s8(data: te.Tensor, weight: te.Tensor, strides, padding, kw: int):
    """uint8 x int8 depthwise conv with column stride 1 or 2, from `pack_depthwise_weight`'s
    weight.

    Each zero-padded row is unfolded once per group of 4 kernel columns into `[columns, 4]`:
    lane x of group g holds columns s*x+4g .. s*x+4g+3 for column stride s (the
    `vnni.UNFOLDS` shuffles). One `vpdpbusd` then multiplies 4 kernel columns for 16
    neighbouring outputs, instead of a widening multiply and an add per tap (EfficientNet-Lite0's
    stride-1 layers 1.2-1.6x, stride-2 layers 1.2-1.5x).
    """
    n, c, h, w = (int(d) for d in data.shape)
    _, kh, groups, _ = (int(d) for d in weight.shape)
    sh, sw = strides
    top, left, bottom, right = padding
    oh = (h + top + bottom - kh) // sh + 1
    ow = (w + left + right - kw) // sw + 1
    if ow <= LANES // 2:
        return _depthwise_half_rows_u8s8(data, weight, strides, padding, oh, ow)
    owp = _ceil(ow, LANES)
    rows = h + top + bottom
    padded = te.compute(
        (n, c, rows, sw * owp + IC_GROUP * groups),  # what the last group's last lane reads
        lambda nn, ch, yp, xs: guarded_load(data, nn, ch, yp - top, xs - left, branch=True),
        name=PAD_BLOCK)
    unfolded = te.compute(
        (n, c, rows, groups, owp, IC_GROUP),
        lambda nn, ch, yp, g, xs, t: padded[nn, ch, yp, xs * sw + g * IC_GROUP + t],
        name=PACK_BLOCK, attrs={UNFOLD_ATTR: sw})
    ry, rg, rt = (te.reduce_axis((0, e), name) for e, name in (
        (kh, "ry"), (groups, "rg"), (IC_GROUP, "rt")))
    acc = te.compute(
        (n, c, oh, owp),
        lambda nn, ch, y, x: te.sum(
            unfolded[nn, ch, y * sh + ry, rg, x, rt].astype("int32")
            * weight[ch, ry, rg, rt].astype("int32"), axis=[ry, rg, rt]),
        name=CONV_BLOCK, attrs={TILE_ATTR: oc_block(c), PACK_IN_TILE_ATTR: 1, VNNI_ATTR: 1})
    return te.compute((n, c, oh, ow), lambda nn, ch, y, x: acc[nn, ch, y, x], name=CROP_BLOCK)


def _depthwise_half_rows_u8s8(data: te.Tensor, weight: te.Tensor, strides, padding, oh: int,
                              ow: int):
    """`packed_depthwise2d_u8s8` on rows of up to 8 outputs (7x7 maps): two output rows per
    vector, flat position p = y * 8 + x. Each padded row is unfolded to 8 lanes and the rows
    laid end to end, so kernel row ry of the vector at p is the 16 lanes at p + 8 * ry: a 7x7
    map takes 4 vectors instead of 7 rows of 16 lanes, 7 of them used. With row stride 2 the
    rows are laid out by phase (even rows, then odd rows): output row y reads padded row
    2y + ry, row 2(y + ry // 2) + ry % 2, so kernel row ry is the 16 lanes at p + 8 * (ry // 2)
    of phase ry % 2 and two neighbouring output rows stay one vector."""
    n, c, h, _ = (int(d) for d in data.shape)
    _, kh, groups, _ = (int(d) for d in weight.shape)
    sh, sw = strides
    top, left, bottom, _ = padding
    half = LANES // 2
    positions = _ceil(oh * half, LANES)
    # rows per phase: the map's padded rows, and what the last vector's taps read
    phase_rows = max(_ceil(h + top + bottom, sh) // sh, positions // half + (kh - 1) // sh)
    padded = te.compute(
        (n, c, phase_rows * sh, sw * half + IC_GROUP * groups),
        lambda nn, ch, yp, xs: guarded_load(data, nn, ch, yp - top, xs - left, branch=True),
        name=PAD_BLOCK)
    unfolded = te.compute(
        (n, c, groups, sh, phase_rows * half, IC_GROUP),
        lambda nn, ch, g, phase, q, t: padded[nn, ch, q // half * sh + phase,
                                              q % half * sw + g * IC_GROUP + t],
        name=PACK_BLOCK, attrs={UNFOLD_ATTR: sw, UNFOLD_LANES_ATTR: half})
    ry, rg, rt = (te.reduce_axis((0, e), name) for e, name in (
        (kh, "ry"), (groups, "rg"), (IC_GROUP, "rt")))
    acc = te.compute(
        (n, c, positions),
        lambda nn, ch, p: te.sum(
            unfolded[nn, ch, rg, ry % sh, p + ry // sh * half, rt].astype("int32")
            * weight[ch, ry, rg, rt].astype("int32"), axis=[ry, rg, rt]),
        name=CONV_BLOCK, attrs={TILE_ATTR: oc_block(c), PACK_IN_TILE_ATTR: 1, VNNI_ATTR: 1,
                                FLAT_ATTR: FLAT_HALF_ROWS})
    # The sums as rows of 8 again, which the epilogue reads by (y, x); the schedule writes the
    # accumulator tiles straight into them.
    acc_rows = te.compute((n, c, positions // half, half),
                          lambda nn, ch, r, x: acc[nn, ch, r * half + x], name=ROWS_BLOCK)
    return te.compute((n, c, oh, ow), lambda nn, ch, y, x: acc_rows[nn, ch, y, x],
                      name=CROP_BLOCK)


def unfoldable(call) -> bool:
    """Whether a uint8 depthwise conv runs as `packed_depthwise2d_u8s8`: column stride 1 or 2
    (`vnni.UNFOLDS`), rows of up to 8 outputs two per vector."""
    stride = int(call.attrs.strides[1])
    out_width = int(call.ty.shape[3])
    return (LANES // 2 if out_width <= LANES // 2 else LANES, stride) in UNFOLDS


def _phase_split_rows(data: te.Tensor, kernel, strides, padding, fill=None):
    """The copy of a sliding window (depthwise conv, pool, a strided conv on the image input's
    transposed rows): each padded row (`fill` outside the map, default 0) split by column
    phase, `[N, C, H+pad, SW, OWp + ...]` (one phase for stride 1), so for every tap the 16
    neighbouring outputs read 16 contiguous inputs: no per-tap expansion of the copy. Returns
    (copy, (OH, OW, OW rounded up to 16))."""
    n, c, h, w = (int(d) for d in data.shape)
    kh, kw = kernel
    sh, sw = strides
    top, left, bottom, right = padding
    oh = (h + top + bottom - kh) // sh + 1
    ow = (w + left + right - kw) // sw + 1
    owp = _ceil(ow, LANES)
    columns = owp + (kw - 1) // sw  # per phase: what the last vector of the last tap reads

    def padded_load(nn, ch, yp, xs):  # padded row yp, padded column xs
        return guarded_load(data, nn, ch, yp - top, xs - left, branch=True, fill=fill)

    rows = h + top + bottom
    if sw > 1:
        # Zero-pad the rows first (a contiguous copy), then split the phases from the padded
        # rows with no checks left: both loops vectorize, a gather with checks did not.
        padded = te.compute((n, c, rows, sw * columns),
                            padded_load, name=PAD_BLOCK)
        packed = te.compute((n, c, rows, sw, columns),
                            lambda nn, ch, yp, phase, xq: padded[nn, ch, yp, xq * sw + phase],
                            name=PACK_BLOCK)
    else:
        packed = te.compute((n, c, rows, sw, columns),
                            lambda nn, ch, yp, phase, xq: padded_load(nn, ch, yp, xq * sw + phase),
                            name=PACK_BLOCK)
    return packed, (oh, ow, owp)


def packed_depthwise2d(data: te.Tensor, weight: te.Tensor, strides, padding):
    """NCHW depthwise conv2d (one KHxKW filter per channel, weight [C, 1, KH, KW] as is), on
    `_phase_split_rows`' copy. uint8 x int8 accumulates in int32."""
    n, c, _, _ = (int(d) for d in data.shape)
    _, _, kh, kw = (int(d) for d in weight.shape)
    sh, sw = strides
    packed, (oh, ow, owp) = _phase_split_rows(data, (kh, kw), strides, padding)
    out_dtype = "int32" if str(data.dtype) == "uint8" else str(data.dtype)
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    # Each channel tile copies its taps once (int8: widened to int32), so every tap is one
    # broadcast load instead of a byte broadcast plus sign extension (int8 depthwise 1.3x).
    weight = te.compute((c, kh, kw),
                        lambda ch, ky, kx: weight[ch, 0, ky, kx].astype(out_dtype),
                        name=WIDE_WEIGHT_BLOCK)
    acc = te.compute(
        (n, c, oh, owp),
        lambda nn, ch, y, x: te.sum(
            packed[nn, ch, y * sh + ry, rx % sw, x + rx // sw].astype(out_dtype)
            * weight[ch, ry, rx], axis=[ry, rx]),
        name=CONV_BLOCK, attrs={TILE_ATTR: oc_block(c), PACK_IN_TILE_ATTR: 1})
    return te.compute((n, c, oh, ow), lambda nn, ch, y, x: acc[nn, ch, y, x], name=CROP_BLOCK)


def packed_max_pool2d(data: te.Tensor, pool_size, strides, padding):
    """NCHW max pool on `_phase_split_rows`' copy, padded with the type's lowest value (what
    `relax.nn.max_pool2d` pads with): 16 neighbouring outputs per vector max, channel tiles
    in parallel, as the depthwise convs. TVM's generic NCHW pool loop strides through the row
    (ResNet50's 3x3/2 pool ~1 ms); NHWC it vectorizes but costs a transpose on each side."""
    n, c, _, _ = (int(d) for d in data.shape)
    kh, kw = pool_size
    sh, sw = strides
    lowest = tvm.tirx.min_value(data.dtype).value
    packed, (oh, ow, owp) = _phase_split_rows(data, (kh, kw), strides, padding, fill=lowest)
    ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
    acc = te.compute(
        (n, c, oh, owp),
        lambda nn, ch, y, x: te.max(packed[nn, ch, y * sh + ry, rx % sw, x + rx // sw],
                                    axis=[ry, rx]),
        name=CONV_BLOCK, attrs={TILE_ATTR: oc_block(c), PACK_IN_TILE_ATTR: 1})
    return te.compute((n, c, oh, ow), lambda nn, ch, y, x: acc[nn, ch, y, x], name=CROP_BLOCK)


def packable_pool(call) -> bool:
    """An NCHW max_pool2d, static shapes, no dilation or ceil mode, float32 or (u)int8."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == "relax.nn.max_pool2d"):
        return False
    a = call.attrs
    return (a.layout == "NCHW" and (a.out_layout or "NCHW") == "NCHW" and not a.ceil_mode
            and all(int(d) == 1 for d in a.dilation)
            and all(isinstance(d, tirx.IntImm) for d in call.args[0].ty.shape)
            and str(call.args[0].ty.dtype) in ("float32", "uint8", "int8"))


def packable_dense(call, weight_names: set[str]) -> bool:
    """A 2-D float32 or uint8 x int8 -> int32 matmul whose [K, N] weight is a model parameter."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == "relax.matmul"):
        return False
    data, weight = call.args
    return (isinstance(weight, relax.Var) and weight.name in weight_names
            and len(data.ty.shape) == 2 and len(weight.ty.shape) == 2
            and all(isinstance(d, tirx.IntImm) for d in (*data.ty.shape, *weight.ty.shape))
            and _dtypes(call) in (FLOAT, U8S8))


def _dtypes(call) -> tuple[str, str, str]:
    return (str(call.args[0].ty.dtype), str(call.args[1].ty.dtype), str(call.ty.dtype))


def is_depthwise(call) -> bool:
    """groups == input channels == output channels (one KHxKW filter per channel)."""
    groups = int(call.attrs.groups)
    return (groups > 1 and int(call.args[0].ty.shape[1]) == groups
            and int(call.args[1].ty.shape[0]) == groups and int(call.args[1].ty.shape[1]) == 1)


def packable(call, weight_names: set[str]) -> bool:
    """An NCHW/OIHW conv2d (groups 1 or depthwise), no dilation, static shapes, float32 or
    uint8 x int8, weight a model parameter."""
    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == "relax.nn.conv2d"):
        return False
    a = call.attrs
    weight = call.args[1]
    return (isinstance(weight, relax.Var) and weight.name in weight_names
            and (int(a.groups) == 1 or is_depthwise(call)) and all(int(d) == 1 for d in a.dilation)
            and (a.data_layout, a.kernel_layout, a.out_layout or a.data_layout) == ("NCHW", "OIHW", "NCHW")
            and all(isinstance(d, tirx.IntImm) for d in call.args[0].ty.shape)
            and _dtypes(call) in (FLOAT, U8S8))


@relax.expr_functor.mutator
class _ConvPacker(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, weights: dict[str, np.ndarray], int8: bool,
                 amx: bool):
        super().__init__(mod)
        self.weights, self.int8, self.amx = weights, int8, amx
        self.packed: dict[str, tuple[relax.Var, np.ndarray]] = {}  # old name -> new param
        self.rewritten = 0

    def _packed(self, old: relax.Var, pack) -> relax.Var:
        """The packed weight parameter replacing `old` (packed once, however often used)."""
        if old.name not in self.packed:
            value = pack(self.weights[old.name])
            var = relax.Var(f"{old.name}_packed", relax.TensorType(value.shape, str(value.dtype)))
            self.packed[old.name] = (var, value)
        return self.packed[old.name][0]

    def _flat(self, data: relax.Expr):
        """`data` [N, C, H, W] viewed as [N, C, H*W] (the VM's reshape: no copy), and (H, W)."""
        n, c, h, w = (int(d) for d in data.ty.shape)
        return self.builder_.emit(relax.op.reshape(data, (n, c, h * w))), (h, w)

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if packable_dense(call, set(self.weights)):
            int8 = _dtypes(call) == U8S8
            if int8 and not self.int8:
                return call
            self.rewritten += 1
            var = self._packed(call.args[1], lambda w: pack_dense_weight(w, int8))
            return self.builder_.call_te(packed_dense, call.args[0], var,
                                         columns=int(call.args[1].ty.shape[1]),
                                         primfunc_name_hint=KERNEL_NAMES[3 if int8 else 4])
        if packable_pool(call):
            self.rewritten += 1
            a = call.attrs
            return self.builder_.call_te(
                packed_max_pool2d, call.args[0], pool_size=[int(k) for k in a.pool_size],
                strides=[int(d) for d in a.strides], padding=[int(p) for p in a.padding],
                primfunc_name_hint=KERNEL_NAMES[6])
        if not packable(call, set(self.weights)):
            return call
        int8 = _dtypes(call) == U8S8
        if int8 and not self.int8:
            return call
        self.rewritten += 1
        a = call.attrs
        strides, padding = [int(s) for s in a.strides], [int(p) for p in a.padding]
        old = call.args[1]
        if self.amx and amx_conv(call):
            var = self._packed(old, pack_amx_weight)
            from .amx import DEPTH

            data, map_shape = call.args[0], None
            if pointwise_input(call) and int(old.ty.shape[1]) % DEPTH == 0:
                data, map_shape = self._flat(data)
            return self.builder_.call_te(packed_conv2d_amx, data, var, strides=strides,
                                         padding=padding, out_channels=int(old.ty.shape[0]),
                                         map_shape=map_shape, primfunc_name_hint=KERNEL_NAMES[5])
        if is_depthwise(call) and int8 and unfoldable(call):
            kw = int(old.ty.shape[3])
            var = self._packed(old, pack_depthwise_weight)
            return self.builder_.call_te(packed_depthwise2d_u8s8, call.args[0], var,
                                         strides=strides, padding=padding, kw=kw,
                                         primfunc_name_hint=KERNEL_NAMES[2])
        if is_depthwise(call):
            return self.builder_.call_te(packed_depthwise2d, call.args[0], old, strides=strides,
                                         padding=padding, primfunc_name_hint=KERNEL_NAMES[2])
        if pointwise_input(call) and (tile := position_tile(call)):
            var = self._packed(old, pack_pointwise_weight)
            flat, (h, w) = self._flat(call.args[0])
            return self.builder_.call_te(
                packed_pointwise_tiles_u8s8, flat, var, height=h, width=w,
                out_channels=int(old.ty.shape[0]), tile=tile, primfunc_name_hint=KERNEL_NAMES[1])
        if int8 and (tile := conv_tile(call)):
            var = self._packed(old, pack_tile_weight)
            return self.builder_.call_te(
                packed_conv2d_tiles_u8s8, call.args[0], var, padding=padding,
                out_channels=int(old.ty.shape[0]), tile=tile, primfunc_name_hint=KERNEL_NAMES[1])
        var = self._packed(old, lambda w: pack_weight(w, int8))
        if pointwise_input(call):
            flat, (h, w) = self._flat(call.args[0])
            return self.builder_.call_te(packed_pointwise_u8s8, flat, var, height=h, width=w,
                                         primfunc_name_hint=KERNEL_NAMES[1])
        data, channels_last = call.args[0], False
        if not int8 and (nhwc := self._nhwc_source(data)) is not None:
            data, channels_last = nhwc, True
        return self.builder_.call_te(
            packed_conv2d, data, var, strides=strides, padding=padding, int8=int8,
            channels_last=channels_last, primfunc_name_hint=KERNEL_NAMES[int8])

    def _nhwc_source(self, data: relax.Expr):
        """The NHWC tensor `data` transposes (`permute_dims(x, [0, 3, 1, 2])`, as the TFLite
        importer feeds an image input to the first conv), or None. The float conv's copy then
        reads it directly: no transpose kernel (EfficientNet-Lite0: its 35-43 us go, the
        stem's copy from NHWC costs 9-20 us more; ResNet50's 7x7 stem: even)."""
        if not isinstance(data, relax.Var):
            return None
        value = self.lookup_binding(data)
        if (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.permute_dims")
                and value.attrs.axes is not None
                and [int(a) for a in value.attrs.axes] == [0, 3, 1, 2]):
            return value.args[0]
        return None


def pack_convolutions(mod: tvm.IRModule, weights: dict[str, np.ndarray], int8: bool = True,
                      amx: bool = False):
    """Return (module, weights) with every packable conv2d using a packed weight parameter.

    int8=False leaves uint8 x int8 convs alone (their kernel needs AVX512-VNNI); amx=True runs
    uint8 x int8 1x1 convs on AMX tiles (`packed_conv2d_amx`).
    """
    packer = _ConvPacker(mod, weights, int8, int8 and amx)
    func = packer.visit_expr(mod[ENTRY])
    if not packer.rewritten:
        return mod, weights
    used = set(relax.analysis.free_vars(func.body))
    n_in = num_inputs(mod)
    params, new_weights = list(func.params[:n_in]), {}
    for p in func.params[n_in:]:
        if p.name in packer.packed:
            var, value = packer.packed[p.name]
            params.append(var)
            new_weights[var.name] = value
        if p in used:
            params.append(p)
            new_weights[p.name] = weights[p.name]
    # a transpose the convs now read through (`_nhwc_source`) is left unused
    body = relax.analysis.remove_all_unused(func.body)
    new_func = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs, func.span)
    packer.builder_.update_func(packer.builder_.get().get_global_var(ENTRY), new_func)
    return packer.builder_.get(), new_weights

