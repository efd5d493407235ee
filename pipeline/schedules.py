"""Default CPU schedules (no tuning), as `tvm.s_tir.dlight` rules (dlight has no CPU conv rule).

Untuned Relax lowers every op to naive single-threaded loops (EfficientNet-Lite0: ~250 ms).
`PackedConvSchedule` schedules the convolution kernels of `packed_conv` (register tiles, VNNI).
`ParallelVectorize` schedules each block of every other fused PrimFunc: the innermost spatial loop
becomes a vector of up to 16 lanes placed inside the reduction loops, the other spatial loops
are fused and run in parallel. The arithmetic and its order per output are unchanged, so
scheduled and unscheduled modules give bit-identical results. A PrimFunc the rule cannot
schedule (e.g. symbolic extents) keeps the generic code.
"""
from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

VECTOR = (16, 8, 4, 2)
VECTORS_PER_TILE = 2  # packed_conv register tile: channel tile x this many 16-lane vectors
# Reductions this short (steps per tile, e.g. a 1x1 conv over 64 channels, a depthwise 3x3) keep
# a one-vector tile in a "global" buffer: under 1 KB, TVM makes it a stack alloca LLVM holds in
# registers (1x1, 64 channels: 230 -> 290 GMAC/s, measured when TVM still put "local" tiles in a
# heap workspace zeroed per tile; `stack_scratch` now moves those to the stack too).
SHORT_REDUCTION = 32
POSITIONS_OUTER_MIN = 28 * 28  # flat map positions; see schedule_packed_conv
# uint8 1x1 expansions run position blocks outer (each interleaving its own input block) up
# to these sizes: weights L1 holds, an output map the task's scattered rows stay cheap over
EXPANSION_WEIGHT_BYTES = 16 * 1024
EXPANSION_OUTPUT_BYTES = 512 * 1024
AMX_FUSED_EPILOGUE_MIN = 14 * 14  # output positions; see schedule_packed_conv_amx
# Depthwise convs unfolding in registers (`_schedule_unfolded_row_blocks`): output rows per
# tile, the first that divides the map's rows (8 against 4 rows: 1.05-1.13x; 16 rows or 16
# accumulators no faster), and at most this many 16-lane accumulators (rows x vectors; 16:
# 4 rows x 4 vectors at 56x56 0.94x, spilling)
ROW_BLOCKS = (8, 7, 4, 2, 1)
ROW_BLOCK_ACCUMULATORS = 8


def _extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _lanes(extent: int) -> int:
    if extent <= VECTOR[0]:
        return extent
    return next((v for v in VECTOR if extent % v == 0), 1)


def schedule_block(sch, block) -> None:
    """Parallelize and vectorize one block in place (no-op if its loops are not plain)."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    kinds = [iv.iter_type for iv in stmt.iter_vars]
    if len(loops) != len(kinds) or not loops:
        return
    extents = [_extent(sch, l) for l in loops]
    if any(e is None for e in extents):
        return
    spatial = [l for l, k in zip(loops, kinds) if k == tirx.IterVar.DataPar]
    reduce = [l for l, k in zip(loops, kinds) if k == tirx.IterVar.CommReduce]
    if not spatial or len(spatial) + len(reduce) != len(loops):
        return
    inner_extent = _extent(sch, spatial[-1])
    lanes = _lanes(inner_extent)
    if lanes > 1 and lanes < inner_extent:
        outer, inner = sch.split(spatial[-1], [None, lanes])
        spatial = spatial[:-1] + [outer]
    else:
        inner = spatial[-1]
        spatial = spatial[:-1]
    sch.reorder(*spatial, *reduce, inner)
    if spatial:
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        sch.parallel(fused)
    if reduce:
        init = sch.decompose_reduction(block, reduce[0])
        init_inner = sch.get_loops(init)[-1]
        if lanes > 1:
            sch.vectorize(init_inner)
    # After decompose_reduction the spatial loop inside the reduction loops can no longer be
    # vectorized by the schedule (no compact dataflow; PackedConvSchedule vectorizes before
    # decomposing); it is innermost with a constant trip count, so LLVM's loop vectorizer does it.
    if lanes > 1 and not reduce:
        sch.vectorize(inner)


def _vectorize_inner(sch, block) -> None:
    """Vectorize a block's innermost loop (split to 16 lanes when longer and divisible)."""
    inner = sch.get_loops(block)[-1]
    extent = _extent(sch, inner)
    if extent is None or extent == 1:
        return
    lanes = _lanes(extent)
    if lanes < extent:
        inner = sch.split(inner, [None, lanes])[1]
    if lanes > 1:
        sch.vectorize(inner)


def _vectorize_ragged(sch, block) -> None:
    """`_vectorize_inner` for an innermost loop longer than 16 that 16 does not divide (a
    14x14 map's 196 flat positions): whole 16-lane vectors, then the rest, instead of all of
    it in the largest divisor's lanes (4). A 1x1 conv's epilogue over 14x14 alone 1.01-1.09x
    (expansions the most); EfficientNet-Lite0 int8 1.035x, ResNet50 int8 1.019x."""
    inner = sch.get_loops(block)[-1]
    extent = _extent(sch, inner)
    lanes = VECTOR[0]
    if extent is None or extent < lanes or extent % lanes == 0:
        _vectorize_inner(sch, block)
        return
    whole, rest = sch.loop_partition(inner, [extent - extent % lanes, None])
    sch.vectorize(sch.split(whole, [None, lanes])[1])
    rest_lanes = _lanes(extent % lanes)
    if rest_lanes < extent % lanes:
        rest = sch.split(rest, [None, rest_lanes])[1]
    if rest_lanes > 1:
        sch.vectorize(rest)


def _iterate_flat_positions(sch, epilogue) -> None:
    """Make an NCHW epilogue iterate the flat position y * W + x (bijective: it covers the
    whole map): from (y, x) read at a flat index, `reverse_compute_at` under a block of flat
    positions derives a wrong region (x pinned to 0)."""
    width = int(sch.get(epilogue).iter_vars[-1].dom.extent)
    sch.transform_block_layout(epilogue, lambda n, o, y, x: (n, o, y * width + x))


def schedule_packed_conv(sch, blocks, names) -> None:
    """Register-tiled, parallel schedule of a `packed_conv` kernel and its fused epilogue.

    Tile: 8 output channels x 16 (or 32) neighbouring outputs, accumulated in registers over
    all input channels and kernel taps; float32 as broadcast-weight FMAs on 16-lane vectors,
    uint8 x int8 as one VNNI instruction per 4 input channels. Each finished row of 8 channels
    then runs the epilogue (bias, requantize, clamp, residual add) while it is still in cache.
    Rows x channel tiles (or, for few output channels, position blocks) run in parallel; the
    input copy runs before them, in parallel too
    (depthwise: each channel tile copies its own rows inside its task).
    """
    from . import packed_conv as pc
    from .vnni import INTERLEAVE, INTRIN, INTRIN_STACK, UNFOLDS

    conv, pack = blocks[names.index(pc.CONV_BLOCK)], blocks[names.index(pc.PACK_BLOCK)]
    # The crop and every fused elementwise op become one epilogue block: the last one.
    for block in blocks[names.index(pc.CROP_BLOCK):-1]:
        sch.compute_inline(block)
    epilogue = blocks[-1]
    notes = sch.get(conv).annotations
    channels = int(notes[pc.TILE_ATTR])
    flat = int(notes.get(pc.FLAT_ATTR, 0))
    vnni = pc.VNNI_ATTR in notes  # innermost reduction: 4 products per int32 lane
    pack_in_tile = bool(int(notes.get(pc.PACK_IN_TILE_ATTR, 0)))
    if flat:
        n, o, x, *red = sch.get_loops(conv)
        rows = []
    else:
        n, o, y, x, *red = sch.get_loops(conv)
        rows = [y]
    columns = _extent(sch, x)
    vectors = next(v for v in (VECTORS_PER_TILE, 2, 1) if columns % (v * pc.LANES) == 0)
    inner_red = red[-1:] if vnni else []
    steps = 1
    for loop in red[:len(red) - len(inner_red)]:
        steps *= _extent(sch, loop)
    on_stack = vectors == 1 or steps <= SHORT_REDUCTION
    if on_stack:
        vectors = 1
    out_channels = _extent(sch, o)
    copy_notes = sch.get(pack).annotations
    if pack_in_tile and vnni and _unfold_in_registers(sch, copy_notes, red, columns):
        _schedule_unfolded_row_blocks(sch, blocks, names, channels)
        return
    local = sch.cache_write(conv, 0, "global" if on_stack else "local")
    ocb, oci = sch.split(o, [None, channels])
    xo, xv, xi = sch.split(x, [None, vectors, pc.LANES])
    # Fewer output channels than inputs over a large map (e.g. 1x1 256 -> 64 at 56x56): each
    # position block runs all channel tiles in turn, so its input stays in L1 across them,
    # instead of streaming the whole input from L2 once per channel tile (alone: int8 1.2-1.6x,
    # float32 1.3-2x; inside EfficientNet-Lite0, whose input then comes warm from the previous
    # kernel, 144 -> 24 at 56x56 1.18x). Maps under 28x28 leave too few blocks for the threads.
    in_channels = steps * (pc.IC_GROUP if vnni else 1)
    large_flat_map = flat == 1 and not pack_in_tile and columns >= POSITIONS_OUTER_MIN
    in_task = large_flat_map and _interleaves_whole_vectors(sch, pack)
    pos_outer = large_flat_map and (out_channels < in_channels or in_task and _small_expansion(
        in_channels, out_channels, columns))
    in_task = in_task and pos_outer
    if pos_outer:
        sch.reorder(n, xo, ocb, *red[:len(red) - len(inner_red)], oci, xv, xi, *inner_red)
        sch.reverse_compute_at(local, ocb)
        outer = sch.fuse(n, xo)
    else:
        sch.reorder(n, ocb, *rows, xo, *red[:len(red) - len(inner_red)], oci, xv, xi, *inner_red)
        sch.reverse_compute_at(local, xo)
        outer = sch.fuse(n, ocb) if pack_in_tile else sch.fuse(n, ocb, *rows)
    sch.parallel(outer)
    if in_task:  # each position block interleaves its own input block, tensorized below
        sch.compute_at(pack, outer)
    if pack_in_tile:
        sch.compute_at(pack, outer)
        if pc.PAD_BLOCK in names:
            sch.compute_at(blocks[names.index(pc.PAD_BLOCK)], outer)
        if pc.WIDE_WEIGHT_BLOCK in names:  # the tile's taps, widened once (a stack buffer)
            sch.compute_at(blocks[names.index(pc.WIDE_WEIGHT_BLOCK)], outer)
    # The finished tile's epilogue: reverse_compute_at derives a wrong region from a flat index
    # y * OW + x (x pinned to 0), so the epilogue first iterates the flat position itself. A
    # map flat over its padded width (y * WP + x, garbage columns) keeps the epilogue as its
    # own parallel loop.
    if flat == 1:
        _iterate_flat_positions(sch, epilogue)
    if flat == pc.FLAT_HALF_ROWS:  # each tile stores its sums as rows of 8 (`ROWS_BLOCK`)
        to_rows = blocks[names.index(pc.ROWS_BLOCK)]
        half = pc.LANES // 2
        sch.transform_block_layout(to_rows, lambda n, o, r, x: (n, o, r * half + x))
        sch.reverse_compute_inline(to_rows)
    # A flat map of whole vectors (112x112, 56x56, 28x28) runs the epilogue per position
    # block, on sums still in registers: a task no longer stores 8 channels x the whole map
    # of int32 sums (400 KB at 112x112) and reads them back (with `stack_scratch`:
    # EfficientNet-Lite0 int8 1.02-1.05x, ResNet50 1.02-1.03x).
    if flat == 1 and not pos_outer and int(sch.get(epilogue).iter_vars[-1].dom.extent) == columns:
        sch.reverse_compute_at(epilogue, xo)
    elif flat != pc.FLAT_PADDED:
        sch.reverse_compute_at(epilogue, rows[0] if pack_in_tile and rows else outer)
    sch.unroll(oci)
    sch.unroll(xv)
    if not vnni:
        sch.vectorize(xi)  # before decompose_reduction: a reduction block may be vectorized
    init = sch.decompose_reduction(conv, red[0])
    if vnni:
        sch.tensorize(xi, INTRIN_STACK if on_stack else INTRIN)
    _vectorize_inner(sch, init)
    _vectorize_inner(sch, local)
    if flat == pc.FLAT_PADDED:
        schedule_block(sch, epilogue)
    else:
        _vectorize_ragged(sch, epilogue)
    if pack_in_tile:
        # Depthwise: zero-padded rows, the column loop left to LLVM, which vectorizes it with
        # masked loads. The channel and row loops stay apart: fused, each row paid a division
        # by the row count to find its channel and row (uint8 inside EfficientNet-Lite0: 13 of
        # 16 depthwise kernels 1.02-1.30x, 5x5 at 28x28 0.92-0.97x, sum 1.075-1.10x; float32
        # even). With a stride, the phases are split from such padded rows (no checks left)
        # with the phase innermost and unrolled: one iteration reads neighbouring elements, an
        # interleaved load group LLVM vectorizes (int8: stride 1 1.5x, stride 2 1.7-3.3x;
        # float32 1.6-2x faster than TVM's vectorized gather). uint8 rows are then unfolded,
        # 16 columns x 4 taps per shuffle (`vnni.UNFOLDS`).
        loops = sch.get_loops(pack)[1:]  # inside the channel tile
        if pc.UNFOLD_ATTR in copy_notes:  # (channel, [row,] group, column, 4)
            lanes = int(copy_notes.get(pc.UNFOLD_LANES_ATTR, pc.LANES))
            sch.fuse(*loops[:-2])
            _, column_lanes = sch.split(loops[-2], [None, lanes])
            sch.tensorize(column_lanes, UNFOLDS[lanes, int(copy_notes[pc.UNFOLD_ATTR])])
        elif int(sch.get(pack).iter_vars[3].dom.extent) > 1:  # (n, channel, row, phase, column)
            sch.reorder(loops[-1], loops[-2])
            sch.unroll(loops[-2])
        else:
            sch.fuse(*loops[:-1])
    elif in_task:
        _, column_lanes = sch.split(sch.get_loops(pack)[-2], [None, pc.LANES])
        sch.tensorize(column_lanes, INTERLEAVE)
    elif pc.INTERLEAVE_ATTR in sch.get(pack).annotations:
        _schedule_interleaved_copy(sch, blocks, names, pack)
    elif pc.TRANSPOSE_BLOCK in names:  # float32 NHWC input: `packed_conv._phase_split_rows`
        _schedule_phase_split_nhwc(sch, *(blocks[names.index(b)] for b in (
            pc.TRANSPOSE_BLOCK, pc.PAD_BLOCK)), pack)
    else:
        schedule_block(sch, pack)


def _schedule_unfolded_row_blocks(sch, blocks, names, channels: int) -> None:
    """A uint8 depthwise conv that unfolds its padded rows in registers (`_unfold_in_registers`,
    `vnni.INTRIN_UNFOLDED`): tiles of up to 8 output rows x 1-4 vectors of one channel, every
    kernel tap unrolled, so the unfolds of an input row that several output rows of the tile
    read are one computation (LLVM merges the identical loads and shuffles): 10 unfolds for 8
    output rows of a 3x3 kernel instead of 24. Channel tiles run in parallel, each padding its
    channels' rows first; each finished block of rows runs the epilogue. Against 8 channels x
    one vector per tile (3x3 only) or an unfolded copy (5x5, rows of one vector), inside
    EfficientNet-Lite0 int8 (its 12 depthwise kernels, 2 threads): 112x112 and 56x56 1.24-1.32x,
    stride 2 from 112x112 1.12x, 5x5 at 28x28 1.24-1.29x (stride 2 from 56x56 1.18-1.27x), 5x5
    at 14x14 1.26-1.28x, 3x3 at 14x14 1.09-1.10x; the whole model 1.04-1.05x."""
    from . import packed_conv as pc
    from .vnni import INTRIN_UNFOLDED

    conv, pack = blocks[names.index(pc.CONV_BLOCK)], blocks[names.index(pc.PACK_BLOCK)]
    epilogue = blocks[-1]
    stride = int(sch.get(pack).annotations[pc.UNFOLD_ATTR])
    n, o, y, x, ry, rg, rt = sch.get_loops(conv)
    rows, vectors = _extent(sch, y), _extent(sch, x) // pc.LANES
    block_rows = next(r for r in ROW_BLOCKS if rows % r == 0)
    block_vectors = next(v for v in (4, 2, 1)
                         if vectors % v == 0 and v * block_rows <= ROW_BLOCK_ACCUMULATORS)
    local = sch.cache_write(conv, 0, "global")  # the tile's sums: a stack buffer, in registers
    ocb, oci = sch.split(o, [None, channels])
    yo, yi = sch.split(y, [None, block_rows])
    xo, xv, xi = sch.split(x, [None, block_vectors, pc.LANES])
    sch.reorder(n, ocb, oci, yo, xo, ry, rg, yi, xv, xi, rt)
    outer = sch.fuse(n, ocb)
    sch.parallel(outer)
    sch.reverse_compute_at(local, xo)
    sch.compute_inline(pack)  # the conv reads the padded rows, unfolding them as it goes
    sch.compute_at(blocks[names.index(pc.PAD_BLOCK)], outer)
    sch.reverse_compute_at(epilogue, yo)
    for loop in (ry, rg, yi, xv):
        sch.unroll(loop)
    init = sch.decompose_reduction(conv, ry)
    sch.tensorize(xi, INTRIN_UNFOLDED[stride])
    _vectorize_inner(sch, init)
    _vectorize_inner(sch, local)
    _vectorize_ragged(sch, epilogue)


def _schedule_phase_split_nhwc(sch, transpose, pad, pack) -> None:
    """The copies of an NHWC image input for a strided float conv, each a parallel loop over
    rows whose column loop LLVM vectorizes: the transpose with the (3) channels innermost and
    unrolled, one pixel's channels an interleaved load group; the zero padding (masked loads);
    the phase split with the phase innermost and unrolled, as for depthwise convs."""
    nn, ch, y, x = sch.get_loops(transpose)
    sch.reorder(nn, y, x, ch)
    sch.parallel(sch.fuse(nn, y))
    sch.unroll(ch)
    sch.parallel(sch.fuse(*sch.get_loops(pad)[:-1]))
    *rows, phase, xq = sch.get_loops(pack)
    sch.reorder(xq, phase)
    sch.parallel(sch.fuse(*rows))
    sch.unroll(phase)


def _interleaves_whole_vectors(sch, pack) -> bool:
    """Whether the copy is `interleaved_in_place`'s over whole 16-position vectors: then a
    task running a block of positions can interleave just that block (`vnni.INTERLEAVE`) in
    its own loop, while it is in L1, instead of a parallel pass over the whole input first
    (one barrier less). Inside EfficientNet-Lite0 int8: 32 -> 16 at 112x112 1.42-1.52x,
    96 -> 24 and 144 -> 24 at 56x56 1.27-1.35x and 1.09-1.16x; ResNet50's 256 -> 64 at 56x56
    1.22x, 512 -> 128 at 28x28 1.11x; alone 1.07-1.9x."""
    from . import packed_conv as pc

    positions = sch.get(pack).annotations.get(pc.RUN_ATTR)
    return positions is not None and int(positions) % pc.LANES == 0


def _small_expansion(in_channels: int, out_channels: int, positions: int) -> bool:
    """A uint8 1x1 expansion whose position blocks may run outer when they interleave their
    own input: the weight stays in L1 across blocks and a task's output rows (one per channel,
    a map apart) span little. 40 -> 240 at 28x28 1.36x alone, 1.12-1.15x inside Lite0, 24 ->
    144 at 56x56 1.14x; over larger spans or weights position blocks lose (16 -> 96 at
    112x112: 1.2 MB, 0.93x; 80 -> 480 at 28x28: 38 KB of weight, 0.83x); float32 expansions
    (no copy to save) lose too (0.85-0.94x)."""
    return (in_channels * out_channels <= EXPANSION_WEIGHT_BYTES
            and out_channels * positions <= EXPANSION_OUTPUT_BYTES)


def _unfold_in_registers(sch, copy_notes, red, columns: int) -> bool:
    """Whether a uint8 depthwise conv unfolds its rows in registers instead of into a copy
    (`_schedule_unfolded_row_blocks`): 16-lane rows, kernels up to 8 columns wide (two groups
    of 4), stride 1, or stride 2 over rows of at least two vectors. The copy of a large map is
    large (a task's 8 channels of EfficientNet-Lite0's 112x112 map unfold to 408 KB) and
    writing it costs more than the shuffles, and with row blocks each in-register unfold
    serves several output rows. Stride 2 to rows of one vector keeps the copy (240 channels,
    28x28 to 14x14: 0.76x); so do half rows (7x7 maps)."""
    from . import packed_conv as pc

    stride = int(copy_notes.get(pc.UNFOLD_ATTR, 0))
    lanes = int(copy_notes.get(pc.UNFOLD_LANES_ATTR, pc.LANES))
    if stride not in (1, 2) or lanes != pc.LANES or columns < stride * pc.LANES:
        return False
    _, column_groups, _ = red  # kernel rows, groups of 4 kernel columns, the 4 columns
    return _extent(sch, column_groups) <= 2


def _schedule_interleaved_copy(sch, blocks, names, pack) -> None:
    """One parallel task per 4 input channels and row (or flat map): it zero-pads them (plain
    column loops LLVM vectorizes with masked loads) and interleaves them while they are in
    cache, 16 columns per shuffle (`vnni.INTERLEAVE`); a copy without a padding block
    (`packed_pointwise_u8s8`) interleaves the input's rows in place (`vnni.interleave_run`)."""
    from . import packed_conv as pc
    from .vnni import INTERLEAVE, interleave_run

    *outer_loops, columns_loop, _ = sch.get_loops(pack)
    tasks = sch.fuse(*outer_loops)
    sch.parallel(tasks)
    positions = sch.get(pack).annotations.get(pc.RUN_ATTR)
    if positions is not None:  # the input's rows read in place, one intrinsic per 4 rows
        sch.tensorize(columns_loop, interleave_run(int(positions), _extent(sch, columns_loop)))
        return
    _, column_lanes = sch.split(columns_loop, [None, pc.LANES])
    pad = blocks[names.index(pc.PAD_BLOCK)]
    sch.compute_at(pad, tasks)
    sch.tensorize(column_lanes, INTERLEAVE)
    width = sch.get(pad).annotations.get(pc.ROW_ATTR)
    if width is not None:
        # A flat copy over padded rows: split its position loop by the row width, so the
        # row and column of each position need no division and each row is a column loop
        # LLVM vectorizes (int8 3x3 512 -> 512 at 7x7 1.07x on VNNI; AMX 3x3/5x5 convs
        # 1.3-1.5x, ResNet50 int8 on an AMX host 1.30x -> 1.37x over VNNI)
        sch.split(sch.get_loops(pad)[-1], [None, int(width)])


def schedule_packed_conv_amx(sch, blocks, names, tiles: bool = True) -> None:
    """A `packed_conv2d_amx` kernel: each parallel task computes 32 output channels x 32
    positions over all input channels and taps in 2 x 2 AMX accumulator tiles
    (`amx.tile_intrin`); the input copy (as for VNNI) is a parallel vector loop of its own.
    The fused epilogue runs inside each task for 1x1 convs on maps of 14x14 or more, else as a
    parallel vector loop of its own. tiles=False keeps the tiles' loop nest (a target without
    AMX: same results, so the packing, blocking and epilogue are testable on any CPU)."""
    from . import packed_conv as pc
    from .amx import BLOCK_COLUMNS, tile_intrin

    conv, pack = blocks[names.index(pc.CONV_BLOCK)], blocks[names.index(pc.PACK_BLOCK)]
    for block in blocks[names.index(pc.CROP_BLOCK):-1]:
        sch.compute_inline(block)
    n, ob, oi, p, *red = sch.get_loops(conv)
    row_stride = int(sch.get(conv).annotations[pc.AMX_ATTR])
    taps = (_extent(sch, red[1]), _extent(sch, red[2])) if row_stride else (1, 1)
    obo, obi = sch.split(ob, [None, 2])
    pb, pi = sch.split(p, [None, BLOCK_COLUMNS])
    sch.reorder(n, obo, pb, obi, oi, pi, *red)
    tasks = sch.fuse(n, obo, pb)
    sch.parallel(tasks)
    epilogue = blocks[-1]
    _, _, height, width = (int(v.dom.extent) for v in sch.get(epilogue).iter_vars)
    # From 14x14 on, each task of a 1x1 conv runs the epilogue of its block while the block is
    # in cache (on an AMX host: 1.05-1.5x over a separate pass); on smaller maps a block is
    # mostly the ragged end of the map, and the separate vector loop was 1.1-1.6x faster. KxK
    # blocks run over the padded width, which reverse_compute_at cannot map back.
    fused_epilogue = not row_stride and height * width >= AMX_FUSED_EPILOGUE_MIN
    if fused_epilogue:
        sch.transform_block_layout(epilogue, lambda n, o, y, x: (n, o, y * width + x))
        sch.reverse_compute_at(epilogue, tasks)
    init = sch.decompose_reduction(conv, obi)
    if tiles:
        sch.tensorize(obi, tile_intrin(_extent(sch, red[0]), taps, row_stride))
    _vectorize_inner(sch, init)
    if pc.INTERLEAVE_ATTR in sch.get(pack).annotations:
        _schedule_interleaved_copy(sch, blocks, names, pack)
    else:
        schedule_block(sch, pack)
    if fused_epilogue:
        _vectorize_inner(sch, epilogue)
    else:
        schedule_block(sch, epilogue)


def schedule_packed_dense(sch, blocks, names) -> None:
    """A `packed_dense` kernel: tiles of up to 4 x 16 output columns accumulated in registers
    over all inputs (float32: one FMA per input and 16 columns; uint8 x int8: one VNNI
    instruction per 4 inputs), tiles in parallel; the fused epilogue (bias, dequantize) runs
    as its own parallel vector loop."""
    from . import packed_conv as pc
    from .vnni import INTRIN_DENSE

    dense = blocks[names.index(pc.DENSE_BLOCK)]
    vnni = pc.PACK_BLOCK in names  # uint8: inputs grouped by 4
    for block in blocks[names.index(pc.CROP_BLOCK):-1]:
        sch.compute_inline(block)
    m, n, *red = sch.get_loops(dense)
    vector_blocks = _extent(sch, n) // pc.LANES
    vectors = next(v for v in (4, 3, 2, 1) if vector_blocks % v == 0)
    local = sch.cache_write(dense, 0, "global")  # <= 256 bytes: a stack tile, in registers
    no, nv, ni = sch.split(n, [None, vectors, pc.LANES])
    sch.reorder(m, no, red[0], nv, ni, *red[1:])
    tiles = sch.fuse(m, no)
    sch.parallel(tiles)
    sch.reverse_compute_at(local, tiles)
    sch.unroll(nv)
    if not vnni:
        sch.vectorize(ni)  # before decompose_reduction, as in schedule_packed_conv
    init = sch.decompose_reduction(dense, red[0])
    if vnni:
        sch.tensorize(ni, INTRIN_DENSE)
        _vectorize_inner(sch, blocks[names.index(pc.PACK_BLOCK)])
    _vectorize_inner(sch, init)
    _vectorize_inner(sch, local)
    schedule_block(sch, blocks[-1])


def schedule_packed_channel_tiles(sch, blocks, names) -> None:
    """A `packed_pointwise_tiles_u8s8` or `packed_conv2d_tiles_u8s8` kernel: tiles of P
    positions x 32 output channels (two 16-lane vectors), accumulated in registers over all
    input channels (and kernel taps), one `vpdpbusd` per position, vector and 4 input channels
    (the position's 4 bytes broadcast); tiles in parallel, each storing its finished tile NCHW
    through the fused epilogue."""
    from . import packed_conv as pc
    from .vnni import INTRIN_DENSE, transposed_store

    conv = blocks[names.index(pc.CONV_BLOCK)]
    for block in blocks[names.index(pc.CROP_BLOCK):-1]:
        sch.compute_inline(block)
    epilogue = blocks[-1]
    tile = int(sch.get(conv).annotations[pc.POSITION_TILE_ATTR])
    n, p, o, rc, *taps, rk = sch.get_loops(conv)  # taps: (ry, rx) of a KxK conv
    vectors = 2 if _extent(sch, o) % (2 * pc.LANES) == 0 else 1
    local = sch.cache_write(conv, 0, "global")  # <= 7 x 32 int32: a stack tile, in registers
    po, pi = sch.split(p, [None, tile])
    ob, ov, oi = sch.split(o, [None, vectors, pc.LANES])
    sch.reorder(n, ob, po, rc, *taps, pi, ov, oi, rk)
    tiles = sch.fuse(n, ob, po)
    sch.parallel(tiles)
    sch.reverse_compute_at(local, tiles)
    transposed = _stores_tile_transposed(sch, epilogue, tile, vectors * pc.LANES)
    _iterate_flat_positions(sch, epilogue)  # its region within a tile: the tile's positions
    if transposed:  # the epilogue writes a [positions, channels] staging tile
        staged = sch.cache_write(epilogue, 0, "global")
        sch.transform_layout(epilogue, ("write", 0), lambda nn, c, y, x: (nn, y, x, c))
    sch.reverse_compute_at(epilogue, tiles)
    sch.unroll(pi)
    sch.unroll(ov)
    init = sch.decompose_reduction(conv, rc)
    sch.tensorize(oi, INTRIN_DENSE)
    _vectorize_inner(sch, init)
    _vectorize_inner(sch, local)
    if transposed:  # channels in the epilogue's lanes, then the transposing store
        sch.reverse_compute_at(staged, tiles)
        *_, channel, position = sch.get_loops(epilogue)
        sch.reorder(position, channel)
        *_, channel, _ = sch.get_loops(staged)
        sch.tensorize(sch.split(channel, [None, pc.LANES])[1], transposed_store(tile))
    _vectorize_inner(sch, epilogue)
    _schedule_interleaved_copy(sch, blocks, names, blocks[names.index(pc.PACK_BLOCK)])


def _stores_tile_transposed(sch, epilogue, tile: int, block_channels: int) -> bool:
    """Whether a channel-lane tile's epilogue runs over channels and stores through
    `vnni.transposed_store`: its tiles lie within one output row, its channel blocks are
    whole, it writes uint8 (not a float or int32 output) and it reads no other map (a
    residual add's input would then be read across channels, a gather). Otherwise each
    channel's positions are gathered from the tile. Inside EfficientNet-Lite0 int8, 7x7
    expansions 192 -> 1152 and 320 -> 1280 1.08-1.12x (2 threads), the whole call
    1.006-1.015x; bit-identical."""
    block = sch.get(epilogue)
    _, channels, _, width = (int(v.dom.extent) for v in block.iter_vars)
    shapes = [[int(d) for d in r.source.shape] for r in block.reads]
    maps = [shape for shape in shapes if len(shape) == 4 and shape[2] * shape[3] > 1]
    (written,) = block.writes
    return (width % tile == 0 and channels % block_channels == 0 and not maps
            and str(written.source.ty.dtype) == "uint8")


class PackedConvSchedule(dl.ScheduleRule):
    """Schedules kernels that hold a `packed_conv` conv or dense block; leaves the rest alone."""

    def apply(self, func, target, _tunable):
        from .packed_conv import AMX_ATTR, CONV_BLOCK, DENSE_BLOCK, POSITION_TILE_ATTR

        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [sch.get(b).name_hint for b in blocks]
        if CONV_BLOCK not in names and DENSE_BLOCK not in names:
            return None
        try:
            if DENSE_BLOCK in names:
                schedule_packed_dense(sch, blocks, names)
            elif POSITION_TILE_ATTR in sch.get(blocks[names.index(CONV_BLOCK)]).annotations:
                schedule_packed_channel_tiles(sch, blocks, names)
            elif AMX_ATTR in sch.get(blocks[names.index(CONV_BLOCK)]).annotations:
                from .compile import has_amx

                schedule_packed_conv_amx(sch, blocks, names, tiles=has_amx(target))
            else:
                schedule_packed_conv(sch, blocks, names)
        except (s_tir.ScheduleError, tvm.error.InternalError, RuntimeError):
            return None  # an unforeseen fused structure: ParallelVectorize's generic loops
        return sch


class ParallelVectorize(dl.ScheduleRule):
    """Applies to any PrimFunc with static loops; leaves the rest to the next rule."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        for block in sch.get_child_blocks(root):
            try:
                schedule_block(sch, block)
            except (s_tir.ScheduleError, tvm.error.InternalError, RuntimeError):
                return None
        return sch


def default_pipeline(target: tvm.target.Target, tuning_dir=None):
    """relax's CPU pipeline with our schedule rules applied after fusion; with a MetaSchedule
    database `tuning_dir` (`tuning.tune`), kernels it has records for get those first."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from .tuning import apply_database

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + cpu_generic.legalize_passes(target)
                + ([apply_database(tuning_dir)] if tuning_dir else [])
                + [dl.ApplyDefaultSchedule(PackedConvSchedule(), ParallelVectorize())]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target))
            return seq(mod)

    return _pipeline
