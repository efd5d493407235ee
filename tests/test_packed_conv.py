"""packed_conv kernels + PackedConvSchedule: same results as the generic build, really fast code.

Each case builds one conv (+ its epilogue) twice: with `schedules: none` (TVM's generic
legalization, unscheduled) and through `compile.specialize` + default schedules (weights
packed, register-tiled, VNNI for uint8 x int8), on random inputs. uint8 x int8 must be bit-exact;
float32 sums in the same order and is compared at 1e-5.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.compile import build, has_vnni, packed_kernels, specialize
from pipeline.packed_conv import (PACK_BLOCK, PAD_BLOCK, pack_dense_weight, pack_weight,
                                  packed_conv2d)
from pipeline.relax_io import ENTRY, weight_params
from pipeline.runner import cpu_flags

X86 = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
GENERIC = tvm.target.Target({"kind": "llvm"})
needs_vnni = pytest.mark.skipif("avx512_vnni" not in cpu_flags(),
                                reason="this CPU has no AVX512-VNNI (cannot run cascadelake code)")

# (in channels, out channels, size, kernel, stride, padding, groups)
CASES = [
    (16, 32, 14, 3, 1, 1, 1),      # OW 14 < one vector of 16
    (24, 16, 7, 3, 1, 1, 1),       # 7x7 map: laid flat (int8: over the padded width, 63 of 64)
    (6, 8, 9, 3, 1, 0, 1),         # small map, no padding, 6 channels (int8: flat over width 9)
    (20, 16, 14, 3, 2, 1, 1),      # strided to a 7x7 flat map, channels not a multiple of 8
    (6, 12, 9, 3, 2, 1, 1),        # in channels not a multiple of 4, out not of 8
    (6, 8, 12, 3, 1, 1, 1),        # stride-1 rows (padded copy + shuffles), 6 channels
    (32, 48, 28, 3, 1, 1, 1),      # rows of 28 (int8: channels in lanes, one vector per tile)
    (12, 32, 10, 5, 1, 2, 1),      # 5x5 over rows of 10 (int8: channels in lanes, tiles of 5)
    (8, 16, 40, 3, 1, 1, 1),       # stride-1 rows over 3 vectors: shifted reads cross vectors
    (4, 8, 20, 5, 1, 2, 1),        # 5x5 stride 1: kernel columns shift the row by up to 4
    (3, 16, 35, 7, 2, 3, 1),       # RGB stem, odd size, big kernel
    (32, 24, 32, 1, 1, 0, 1),      # OW 32 = two vectors per tile
    (32, 48, 16, 1, 1, 0, 1),      # 1x1 on 16 whole vectors: epilogue per position block
    (40, 64, 28, 1, 2, 0, 1),      # strided 1x1 (ResNet downsample), 14x14 flat in 208 lanes
    (240, 80, 14, 1, 1, 0, 1),     # 1x1, 14x14 flat, bias-only epilogue (see conv_model)
    (12, 16, 7, 1, 1, 0, 1),       # 1x1 on 49 positions: 3 runs of 16 read in place + 1 byte
                                   # (int8: channels in lanes, tiles of 7 positions)
    (32, 40, 7, 1, 1, 0, 1),       # the same, 40 outputs (one vector per tile), + residual
    (16, 64, 5, 1, 1, 0, 1),       # 1x1 on 25 positions: tiles of 5 x two vectors
    (8, 8, 3, 1, 1, 0, 1),         # 1x1 on 9 positions: no whole run of 16, only the ragged end
    (6, 8, 10, 1, 1, 0, 1),        # 1x1, 6 channels (not a multiple of 4): the gathered copy
    (48, 16, 28, 1, 1, 0, 1),      # fewer outputs than inputs, 28x28: position blocks outer
                                   # (int8: each interleaves its own input block)
    (16, 64, 28, 1, 1, 0, 1),      # a small expansion: int8 position blocks outer too
    (160, 24, 32, 1, 1, 0, 1),     # the same with a long reduction (two-vector "local" tile)
    (24, 24, 17, 3, 1, 1, 24),     # depthwise
    (24, 24, 14, 5, 1, 2, 24),     # depthwise 5x5 (int8: two groups of 4 kernel columns)
    (24, 24, 7, 5, 1, 2, 24),      # depthwise 5x5 on 7x7 (int8: two rows of 8 per vector)
    (8, 8, 6, 3, 1, 0, 8),         # depthwise 3x3, no padding: 4x4 output
    (16, 16, 8, 3, 1, 1, 16),      # depthwise 3x3 on 8x8: rows of exactly 8
    (16, 16, 7, 5, (2, 1), 2, 16),  # depthwise, rows strided only (int8: half rows, 2 phases)
    (16, 16, 14, 5, 2, 2, 16),     # depthwise 5x5 stride 2 to 7x7 (int8: half rows, stride 2)
    (16, 16, 13, 3, 2, 1, 16),     # depthwise 3x3 stride 2 to 7x7, odd input
    (40, 40, 20, 5, 2, 2, 40),     # depthwise 5x5 stride 2
    (16, 16, 15, 3, 2, 1, 16),     # depthwise 3x3 stride 2, odd width: last phase is short
    (16, 16, 19, 3, 2, 1, 16),     # depthwise 3x3 stride 2 to 10 columns (int8: unfolded rows)
    (8, 8, 40, 3, 2, 1, 8),        # the same to 20 columns: two column blocks per row
    (16, 16, 16, 3, 1, 1, 16),     # depthwise 3x3, 16 rows of one vector (int8: blocks of 8 rows)
    (8, 8, 40, 5, 2, 2, 8),        # depthwise 5x5 stride 2 to 20x20 (int8: 4 rows x 2 vectors)
    (40, 48, 7, 1, 1, 0, 1),       # 1x1 on 7x7 (int8: channel lanes, stored transposed)
    (16, 40, 7, 1, 1, 0, 1),       # the same, 40 channels: a partial block (int8: gathered)
    (16, 32, 2, 1, 1, 0, 1),       # 2x2 map (int8: a tile of 4 positions spans both rows)
]


def conv_model(int8: bool, c, o, size, k, stride, pad, groups, residual: bool = False,
               activation: bool = True, channels_last: bool = False):
    """conv -> bias -> epilogue: ReLU (float) or shift/clip/cast to uint8 (int8), + residual;
    activation=False stops after the bias (and the shift). `channels_last`: the input is NHWC,
    transposed to NCHW first (as TFLite models feed their image input)."""
    bb = relax.BlockBuilder()
    dt, wt, acc = ("uint8", "int8", "int32") if int8 else ("float32",) * 3
    out_size = (size + 2 * pad - k) // (stride if isinstance(stride, int) else stride[0]) + 1
    x = relax.Var("x", relax.TensorType((1, size, size, c) if channels_last else (1, c, size, size),
                                        dt))
    w = relax.Var("w", relax.TensorType((o, c // groups, k, k), wt))
    b = relax.Var("b", relax.TensorType((1, o, 1, 1), acc))
    params = [x, w, b]
    if residual:
        r = relax.Var("r", relax.TensorType((1, o, out_size, out_size), dt))
        params.append(r)
    with bb.function(ENTRY, params, attrs={"num_input": 1}):
        with bb.dataflow():
            nchw = bb.emit(relax.op.permute_dims(x, [0, 3, 1, 2])) if channels_last else x
            y = bb.emit(relax.op.nn.conv2d(nchw, w, strides=stride, padding=pad, groups=groups,
                                           out_dtype=acc))
            y = bb.emit(relax.op.add(y, b))
            if int8:
                y = bb.emit(relax.op.right_shift(y, relax.const(6, "int32")))
                if residual:
                    y = bb.emit(relax.op.add(y, relax.op.astype(r, "int32")))
                if activation:
                    y = bb.emit(relax.op.astype(relax.op.clip(y, 0, 255), "uint8"))
            else:
                if residual:
                    y = bb.emit(relax.op.add(y, r))
                if activation:
                    y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit_output(y)
        bb.emit_func_output(y)
    rng = np.random.default_rng(c * 1000 + o)
    shape = tuple(int(d) for d in x.ty.shape)
    if int8:
        xs = rng.integers(0, 256, shape).astype("uint8")
        weights = {"w": rng.integers(-128, 128, (o, c // groups, k, k)).astype("int8"),
                   "b": rng.integers(-2000, 2000, (1, o, 1, 1)).astype("int32")}
        if residual:
            weights["r"] = rng.integers(0, 256, (1, o, out_size, out_size)).astype("uint8")
    else:
        xs = rng.standard_normal(shape).astype("float32")
        weights = {"w": rng.standard_normal((o, c // groups, k, k)).astype("float32"),
                   "b": rng.standard_normal((1, o, 1, 1)).astype("float32")}
        if residual:
            weights["r"] = rng.standard_normal((1, o, out_size, out_size)).astype("float32")
    return bb.get(), xs, weights


def run(mod, weights, x, target, schedules):
    mod, weights = specialize(mod, weights, target, schedules)
    vm = relax.VirtualMachine(build(mod, target, schedules), tvm.cpu())
    args = [tvm.runtime.tensor(weights[p.name]) for p in weight_params(mod)]
    # Run once on other data first: an output element the kernel fails to write would keep
    # that run's value (or a pooled buffer's), not happen to hold the expected one.
    vm[ENTRY](tvm.runtime.tensor(np.ascontiguousarray(x[..., ::-1, :])), *args)
    return vm[ENTRY](tvm.runtime.tensor(x), *args).numpy(), mod


def scheduled_by_packed_rule(mod) -> int:
    """How many fused kernels of `mod` PackedConvSchedule schedules (it returns None = falls
    back to generic loops when it cannot)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from pipeline.schedules import PackedConvSchedule

    with X86:
        fused = tvm.transform.Sequential(cpu.legalize_passes(X86))(mod)
    return sum(PackedConvSchedule().apply(f, X86, False) is not None
               for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


@needs_vnni
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "c{}o{}s{}k{}st{}p{}g{}".format(*c))
def test_packed_kernel_matches_generic_build(int8, case):
    mod, x, weights = conv_model(int8, *case, residual=case[0] == 32, activation=case[0] != 240)
    expected, _ = run(mod, weights, x, X86, "none")
    got, built = run(mod, weights, x, X86, "default")
    kind = "packed_depthwise2d" if case[-1] > 1 else ("packed_conv2d_u8s8" if int8 else "packed_conv2d_f32")
    assert packed_kernels(built)[kind] == 1
    assert scheduled_by_packed_rule(built) == 1  # not the generic fallback
    if int8:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@needs_vnni
@pytest.mark.parametrize("int8,case", [
    (False, (3, 16, 35, 7, 2, 3, 1)), (False, (3, 32, 20, 3, 2, 1, 1)),
    (False, (8, 16, 12, 3, 1, 1, 1)), (True, (8, 16, 12, 3, 1, 1, 1))])
def test_conv_reads_an_nhwc_input_through_its_transpose(int8, case):
    """A float conv fed `permute_dims(x, [0, 3, 1, 2])` of an NHWC input (a TFLite model's
    image input) copies straight from the NHWC tensor: the transpose kernel is gone, the
    results match the generic build. uint8 convs keep the transpose."""
    mod, x, weights = conv_model(int8, *case, channels_last=True)
    packed, _ = specialize(mod, weights, X86, "default")
    assert ("permute_dims" in packed[ENTRY].script()) == int8
    expected, _ = run(mod, weights, x, X86, "none")
    got, built = run(mod, weights, x, X86, "default")
    assert scheduled_by_packed_rule(built) == 1
    if int8:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("amx", [False, True], ids=["vnni", "amx"])
@pytest.mark.parametrize("size", [14, 16])
def test_int8_pointwise_conv_interleaves_its_input_in_place(size, amx):
    """A uint8 1x1 stride-1 conv (VNNI, or AMX over a multiple of 64 channels) reads its input
    through a reshape the VM runs as a view (`vm.builtin.reshape`, no copy) and interleaves it
    without a zero-padded copy first, on ragged (196) and whole-vector (256) maps alike."""
    from pipeline.packed_conv import KERNEL_NAMES, pack_convolutions

    channels = 128 if amx else 32
    mod, x, weights = conv_model(True, channels, 96, size, 1, 1, 0, 1)
    packed, _ = pack_convolutions(mod, weights, int8=True, amx=amx)
    name = KERNEL_NAMES[5] if amx else "packed_conv2d_u8s8"
    kernel = next(f for gv, f in packed.functions_items() if gv.name_hint.startswith(name))
    script = kernel.script()
    assert f'sblock("{PACK_BLOCK}")' in script and f'sblock("{PAD_BLOCK}")' not in script
    signature = next(line for line in script.splitlines() if line.startswith("def main("))
    assert f'T.int64({channels}), T.int64({size * size})), "uint8")' in signature  # [N, C, H*W]
    assert "vm.builtin.reshape" in build(packed, X86, "default").as_text()


@needs_vnni
def test_int8_conv_is_tensorized_with_vpdpbusd():
    mod, x, weights = conv_model(True, 64, 64, 14, 3, 1, 1, 1)
    packed, packed_weights = specialize(mod, weights, X86, "default")
    asm = build(packed, X86, "default").mod.imports[0].inspect_source("asm")
    vnni = [line for line in asm.splitlines() if "vpdpbusd" in line]
    assert vnni and all("%zmm" in line for line in vnni), vnni[:3]  # 16 int32 lanes each


def test_targets_without_vnni_keep_generic_int8_convs_and_pack_float_ones():
    assert has_vnni(X86) and not has_vnni(GENERIC)
    mod, x, weights = conv_model(True, 16, 32, 14, 3, 1, 1, 1)
    same, same_weights = specialize(mod, weights, GENERIC, "default")
    assert same is mod and same_weights is weights
    expected, _ = run(mod, weights, x, GENERIC, "none")
    np.testing.assert_array_equal(run(mod, weights, x, GENERIC, "default")[0], expected)
    fmod, fx, fweights = conv_model(False, 16, 32, 14, 3, 1, 1, 1)
    fexpected, _ = run(fmod, fweights, fx, GENERIC, "none")
    fgot, built = run(fmod, fweights, fx, GENERIC, "default")
    assert packed_kernels(built)["packed_conv2d_f32"] == 1
    np.testing.assert_allclose(fgot, fexpected, rtol=1e-5, atol=1e-5)
    assert specialize(fmod, fweights, GENERIC, "none")[0] is fmod


def test_weight_packing_layouts():
    w = np.arange(16 * 6 * 3 * 3).reshape(16, 6, 3, 3)
    f = pack_weight(w.astype(np.float32), int8=False)
    assert f.shape == (2, 6, 3, 3, 8) and f[1, 5, 2, 1, 3] == w[8 + 3, 5, 2, 1]
    q = pack_weight((w % 200 - 100).astype(np.int8), int8=True)
    assert q.shape == (2, 2, 3, 3, 8, 4)  # 6 input channels padded to 8 with zeros
    assert q[1, 1, 2, 0, 7, 1] == (w[15, 5, 2, 0] % 200 - 100) and q[1, 1, 2, 0, 7, 2] == 0


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_stride_one_rows_are_copied_once_not_per_kernel_column(int8):
    """Stride 1: the copy holds each zero-padded row once (kernel column kx reads it shifted
    by kx); strided convs copy every kernel column apart."""
    from tvm import te

    dtype, wdtype = ("uint8", "int8") if int8 else ("float32", "float32")
    data = te.placeholder((1, 16, 56, 56), dtype)
    weight = te.placeholder(pack_weight(np.zeros((32, 16, 3, 3), wdtype), int8).shape, wdtype)

    def copy_shape(stride):
        out = packed_conv2d(data, weight, (stride, stride), (1, 1, 1, 1), int8)
        tensors, seen = [out], []
        while tensors:
            t = tensors.pop()
            seen.append(t)
            tensors += [i for i in t.op.input_tensors if i not in seen]
        return [tuple(int(d) for d in t.shape) for t in seen if t.op.name == PACK_BLOCK][0]

    rows = (1, 4, 58, 80, 4) if int8 else (1, 16, 58, 80)  # 64 columns + 2 of padding -> 80
    assert copy_shape(1) == rows
    assert copy_shape(2) == ((1, 4, 58, 3, 32, 4) if int8 else (1, 16, 58, 3, 32))


@pytest.mark.parametrize("size,stride,kernel", [
    (20, 1, 5), (20, 2, 5), (19, 2, 3), (14, 2, 5), (15, 2, 3), (20, 3, 3), (7, 1, 5),
    (9, 1, 3)])
def test_int8_depthwise_unfolds_rows_of_stride_one_or_two(size, stride, kernel):
    """uint8 depthwise convs unfold their padded rows (4 kernel columns per int32 lane) for
    column stride 1 and 2; larger strides keep the phase-split copy. Rows of up to 8 outputs
    are unfolded to 8 lanes and laid end to end, two output rows per vector (with stride 2,
    even rows then odd rows)."""
    from pipeline.packed_conv import UNFOLD_ATTR, UNFOLD_LANES_ATTR

    pad = kernel // 2
    mod, _, weights = conv_model(True, 8, 8, size, kernel, stride, pad, 8)
    packed, _ = specialize(mod, weights, X86, "default")
    script = next(f for _, f in packed.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc)).script()
    unfolds = re.findall(rf'"{re.escape(UNFOLD_ATTR)}": (\d+)', script)
    out = (size + 2 * pad - kernel) // stride + 1
    lanes = re.findall(rf'"{re.escape(UNFOLD_LANES_ATTR)}": (\d+)', script)
    copy = next((line for line in script.splitlines()
                 if f"{PACK_BLOCK} = T.sblock_alloc_buffer" in line), "")
    copy_shape = [int(d) for d in re.findall(r"T.int64\((\d+)\)", copy)][2:]
    groups, rows = -(-kernel // 4), size + 2 * pad
    if stride <= 2 and out <= 8:
        assert unfolds == [str(stride)] and lanes == ["8"]
        # groups of 4 kernel columns x row phases x rows of 8 end to end (as many as the taps
        # of the last vector of 16 read) x 4 taps
        vectors = -(-out * 8 // 16)
        phase_rows = max(-(-rows // stride), vectors * 2 + (kernel - 1) // stride)
        assert copy_shape == [groups, stride, phase_rows * 8, 4]
    elif stride <= 2:
        assert unfolds == [str(stride)] and lanes == []
        # rows x groups of 4 kernel columns x output columns rounded up to 16 x 4 taps
        assert copy_shape == [rows, groups, -(-out // 16) * 16, 4]
    else:
        assert unfolds == []


@pytest.mark.parametrize("size,stride,kernel,rows", [
    (40, 1, 3, 8), (40, 2, 3, 4), (17, 1, 3, 1), (14, 1, 3, 7), (14, 1, 5, 7), (40, 1, 5, 8),
    (36, 2, 5, 2), (19, 2, 3, 0), (7, 1, 3, 0), (14, 1, 9, 0)])
def test_int8_depthwise_on_16_lane_rows_unfolds_in_registers_by_row_blocks(size, stride,
                                                                           kernel, rows):
    """A uint8 depthwise conv over 16-lane rows (stride 1, or stride 2 over rows of two vectors
    or more; kernels up to 8 columns wide) unfolds its padded rows in registers
    (`vnni.INTRIN_UNFOLDED`): its kernel has no unfolded copy, and each tile is a block of
    `rows` output rows (the first of 8, 7, 4, 2, 1 dividing the map's rows), unrolled so that
    the rows share their input rows' unfolds. Stride 2 to rows of one vector, half rows (7x7)
    and 9-column kernels keep the copy (rows 0)."""
    script = _scheduled_kernel(conv_model(True, 8, 8, size, kernel, stride, kernel // 2, 8))
    assert (PACK_BLOCK not in script) == bool(rows)
    assert "vpdpbusd" in script
    if rows:
        unrolled = [int(n) for n in re.findall(r"T.unroll\(T.int64\((\d+)\)\)", script)]
        assert rows in unrolled or rows == 1


@pytest.mark.parametrize("c,o,size,k,residual,activation,transposed", [
    (32, 48, 7, 1, False, True, True), (24, 32, 10, 5, False, True, True),
    (32, 48, 7, 1, True, True, False), (32, 48, 7, 1, False, False, False),
    (16, 40, 7, 1, False, True, False), (16, 32, 2, 1, False, True, False)])
def test_int8_channel_tiles_store_through_a_transposed_tile(c, o, size, k, residual,
                                                            activation, transposed):
    """A uint8 conv with output channels in the lanes (7x7 1x1, a 5x5 over rows of 10) runs its
    epilogue over 16 channels at a time and stores the tile transposed with masked stores
    (`vnni.transposed_store`), unless it adds a residual map (read across channels, a gather),
    writes no uint8 (int32 here; ResNet50's last conv writes float32), its last channel block
    is partial (40 channels) or a tile spans two rows (2x2 map). Either way the packed rule
    schedules it (no generic fallback)."""
    script = _scheduled_kernel(conv_model(True, c, o, size, k, 1, k // 2, 1, residual=residual,
                                          activation=activation))
    assert ("llvm.masked.store" in script) == transposed
    assert "vpdpbusd" in script


@pytest.mark.parametrize("int8,size,rest", [
    (False, 14, (192, 196)), (True, 14, (192, 196)), (False, 16, None), (True, 16, None),
    (True, 7, None)])
def test_epilogue_over_a_ragged_map_runs_whole_vectors_then_the_rest(int8, size, rest):
    """A 1x1 conv's epilogue over 196 flat positions (14x14) runs 12 vectors of 16 lanes, then
    the last 4 positions, instead of 49 vectors of 4; maps of whole vectors (16x16) and int8
    7x7 maps (channels in lanes) have no such rest loop."""
    script = _scheduled_kernel(conv_model(int8, 32, 48, size, 1, 1, 0, 1))
    rests = re.findall(r"T.vectorized\(T.int64\((\d+)\), T.int64\((\d+)\)\)", script)
    assert rests == ([tuple(str(p) for p in rest)] if rest else [])


@pytest.mark.parametrize("c,o,size,in_task", [
    (48, 16, 28, True), (16, 64, 28, True), (40, 240, 28, True), (80, 480, 28, False),
    (16, 96, 112, False), (48, 16, 30, False)])
def test_int8_position_blocks_interleave_their_own_input(c, o, size, in_task):
    """A uint8 1x1 conv over a map of whole vectors whose position blocks run outer (fewer
    outputs than inputs, or a small expansion: 40 -> 240 at 28x28) interleaves each block's
    input inside that block's task: one parallel loop, no pass over the whole input first.
    Larger expansions (38 KB of weight; 1.2 MB of output at 112x112) keep channel tiles outer,
    and a ragged map (900 positions) the separate copy."""
    script = _scheduled_kernel(conv_model(True, c, o, size, 1, 1, 0, 1))
    assert script.count("T.parallel(") == (1 if in_task else 2)


def _scheduled_kernel(model) -> str:
    """The TIR of a conv_model's conv kernel as PackedConvSchedule schedules it."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from pipeline.schedules import PackedConvSchedule

    mod, _, weights = model
    packed, _ = specialize(mod, weights, X86, "default")
    with X86:
        fused = tvm.transform.Sequential(cpu.legalize_passes(X86))(packed)
    (kernel,) = [f for gv, f in fused.functions_items()
                 if isinstance(f, tvm.tirx.PrimFunc) and gv.name_hint.startswith("fused_packed")]
    return PackedConvSchedule().apply(kernel, X86, False).mod["main"].script()


def _position_tiles(model):
    """(the POSITION_TILE_ATTR values in the packed kernel, its packed weight) of a conv_model."""
    from pipeline.packed_conv import POSITION_TILE_ATTR

    mod, _, weights = model
    packed, packed_weights = specialize(mod, weights, X86, "default")
    script = next(f for _, f in packed.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc)).script()
    (weight,) = [w for name, w in packed_weights.items() if name.startswith("w")]
    return re.findall(rf'"{re.escape(POSITION_TILE_ATTR)}": (\d+)', script), weight


@pytest.mark.parametrize("size,tile", [(7, 7), (6, 6), (5, 5), (3, 0), (8, 0), (4, 0)])
def test_int8_pointwise_conv_on_small_maps_puts_channels_in_lanes(size, tile):
    """A uint8 1x1 conv on a map of fewer than 64 positions that 16-lane vectors would fill
    unevenly runs output channels in lanes, tiles of 4-7 positions, weight [O/16, C/4, 16, 4];
    maps of whole vectors (4x4, 8x8) or no such tile (3x3) keep position vectors."""
    tiles, weight = _position_tiles(conv_model(True, 32, 48, size, 1, 1, 0, 1))
    if tile:
        assert tiles == [str(tile)] and weight.shape == (3, 8, 16, 4)
    else:
        assert tiles == [] and weight.shape == (6, 8, 1, 1, 8, 4)


@pytest.mark.parametrize("size,kernel,out,stride,tile", [
    (7, 3, 48, 1, 7), (14, 3, 48, 1, 7), (28, 3, 48, 1, 7), (40, 3, 48, 1, 5), (14, 5, 32, 1, 7),
    (16, 3, 48, 1, 0), (32, 3, 48, 1, 0), (14, 3, 24, 1, 0), (9, 3, 48, 1, 0), (28, 3, 48, 2, 0)])
def test_int8_kxk_conv_on_uneven_rows_puts_channels_in_lanes(size, kernel, out, stride, tile):
    """A uint8 KxK stride-1 conv whose output rows do not fill whole 16-lane vectors (7, 14,
    28, 40 wide) runs output channels in lanes: tiles of 4-7 positions of a row, weight
    [O/16, C/4, KH, KW, 16, 4]. Rows of whole vectors (16, 32), outputs not a multiple of 16,
    rows no tile divides (9) and strided convs keep position vectors."""
    tiles, weight = _position_tiles(
        conv_model(True, 32, out, size, kernel, stride, kernel // 2, 1))
    if tile:
        assert tiles == [str(tile)]
        assert weight.shape == (out // 16, 8, kernel, kernel, 16, 4)
    else:
        assert tiles == [] and weight.shape == (out // 8, 8, kernel, kernel, 8, 4)


def dense_model(int8: bool, k: int, n: int):
    """The classifier head: [1, K] x [K, N] + bias; int8: uint8 x int8 -> int32, + int32 bias,
    dequantized to float (what the quantizer emits)."""
    bb = relax.BlockBuilder()
    dt, wt, acc = ("uint8", "int8", "int32") if int8 else ("float32",) * 3
    x = relax.Var("x", relax.TensorType((1, k), dt))
    params = [x, relax.Var("w", relax.TensorType((k, n), wt)),
              relax.Var("b", relax.TensorType((1, n), acc)),
              relax.Var("s", relax.TensorType((1, n), "float32"))]
    with bb.function(ENTRY, params, attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit(relax.op.add(relax.op.matmul(x, params[1], out_dtype=acc), params[2]))
            y = bb.emit(relax.op.multiply(relax.op.astype(y, "float32"), params[3]))
            y = bb.emit_output(y)
        bb.emit_func_output(y)
    rng = np.random.default_rng(k * 1000 + n)
    if int8:
        return bb.get(), rng.integers(0, 256, (1, k)).astype("uint8"), {
            "w": rng.integers(-128, 128, (k, n)).astype("int8"),
            "b": rng.integers(-2000, 2000, (1, n)).astype("int32"),
            "s": rng.random((1, n)).astype("float32")}
    return bb.get(), rng.standard_normal((1, k)).astype("float32"), {
        "w": rng.standard_normal((k, n)).astype("float32"),
        "b": rng.standard_normal((1, n)).astype("float32"), "s": rng.random((1, n)).astype("float32")}


@needs_vnni
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("k,n", [(1280, 1000), (30, 20)], ids=["lite0-head", "ragged"])
def test_packed_dense_matches_generic_build(int8, k, n):
    """The classifier head as our kernel (int8: VNNI, bit-exact; float32 within 1e-5); K and N
    need not be multiples of 4/16; without VNNI the int8 head keeps the generic matmul."""
    mod, x, weights = dense_model(int8, k, n)
    expected, _ = run(mod, weights, x, X86, "none")
    got, built = run(mod, weights, x, X86, "default")
    assert packed_kernels(built)["packed_dense_u8s8" if int8 else "packed_dense_f32"] == 1
    assert scheduled_by_packed_rule(built) == 1
    if int8:
        np.testing.assert_array_equal(got, expected)
        assert specialize(mod, weights, GENERIC, "default")[0] is mod
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def pool_model(dtype: str, c: int, size: int, pool: int, stride: int, pad: int):
    """A max pool alone, NCHW (what the import leaves of ResNet50's pad + pool)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, size, size), dtype))
    with bb.function(ENTRY, [x], attrs={"num_input": 1}):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.nn.max_pool2d(x, pool, stride, pad)))
        bb.emit_func_output(y)
    rng = np.random.default_rng(c * 100 + size)
    if dtype == "uint8":
        xs = rng.integers(0, 256, (1, c, size, size)).astype(dtype)
    else:  # negatives at the border: padding with 0 instead of the lowest value would show
        xs = (rng.standard_normal((1, c, size, size)) - 2).astype(dtype)
    return bb.get(), xs, {}


@needs_vnni
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
@pytest.mark.parametrize("case", [(16, 17, 3, 2, 1), (8, 14, 2, 2, 0), (24, 9, 3, 1, 1),
                                  (12, 20, 3, 2, 0)],
                         ids=lambda c: "c{}s{}k{}st{}p{}".format(*c))
def test_packed_max_pool_matches_generic_build(dtype, case):
    """NCHW max pools as `packed_max_pool2d` (rows split by column phase, padded with the
    type's lowest value), on every llvm target: same result as TVM's own pool."""
    mod, x, weights = pool_model(dtype, *case)
    expected, _ = run(mod, weights, x, GENERIC, "none")
    for target in (X86, GENERIC):
        got, built = run(mod, weights, x, target, "default")
        assert packed_kernels(built)["packed_max_pool2d"] == 1
        np.testing.assert_array_equal(got, expected)
    assert scheduled_by_packed_rule(built) == 1


def test_dense_weight_packing_layout():
    w = (np.arange(30 * 20).reshape(30, 20) % 251 - 125).astype(np.int8)
    f = pack_dense_weight(w.astype(np.float32), int8=False)
    assert f.shape == (2, 30, 16) and f[1, 29, 3] == w[29, 19] and f[1, 0, 4] == 0
    p = pack_dense_weight(w, int8=True)
    assert p.shape == (2, 8, 16, 4)  # N 20 -> 32 columns, K 30 -> 32 inputs, zero-padded
    assert p[1, 7, 3, 1] == w[29, 19] and p[1, 7, 3, 2] == 0 and p[1, 0, 4, 0] == 0
