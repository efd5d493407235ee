"""GPU kernels for the cuda target: TVM's DLight rules, plus two of ours for the reductions of
a CNN at batch 1 that DLight schedules badly.

- Depthwise convs (short reductions): DLight gives them to GeneralReduction, one 256-thread
  block per output element reduced across threads (for a 3x3, 9 busy threads of 256). On an
  H100, EfficientNet-Lite0's 3x3 x 144 channels at 56x56 took 358 us and its depthwise convs
  ~1.35 ms of a 2.6 ms call. `ShortReduction` runs one output per thread, its sum in a
  register and its epilogue in the same thread.
- 1x1 convs on small maps and the classifier (few outputs, long reductions, e.g. 1152 -> 192
  channels at 7x7: 9408 outputs, 1152 steps): DLight's matmul rule tiles the outputs, which
  leaves most of the GPU idle (70-77 us for that conv in fp32). `WarpReduction` gives each
  output a warp that splits the reduction over its 32 lanes and combines them with warp
  shuffles (25 us).

Lite0 at batch 1 on the H100: DLight alone fp32 2.59 ms, int8 2.29 ms; with `ShortReduction`
0.83 / 0.50 ms; with both 0.57 / 0.40 ms. Integer sums are exact in any order, so int8 results
stay bit-identical to the unscheduled module.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

# Reductions up to this many steps per output run as one thread's loop (depthwise 3x3: 9, 5x5:
# 25); longer ones (e.g. 1x1 convs over hundreds of channels) keep DLight's reduction rules.
SHORT_REDUCTION_STEPS = 64
THREADS = 256  # per block
# A warp per output where a kernel has at most this many outputs and reductions this long (in
# EfficientNet-Lite0 the 1x1 convs from 240 or more channels at 28x28 and below, and the
# classifier: 1000-31360 outputs, 240-1280 steps); below that many steps, or with more outputs,
# DLight's matmul tiles keep the GPU busy enough.
FEW_OUTPUTS = 32768
LONG_REDUCTION_STEPS = 240
WARP = 32
WARP_OUTPUTS_PER_BLOCK = 4


def _fused(sch, loops):
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


class _ReductionRule(GPUScheduleRule):
    """A rule for kernels that are, after inlining their producers (e.g. the padding), one
    reduction block with constant extents, its spatial loops outside its reduction loops,
    followed by elementwise epilogue blocks. Subclasses say which sizes they take (`accepts`)
    and how to schedule them (`schedule`)."""

    def accepts(self, outputs: int, steps: int) -> bool:
        raise NotImplementedError

    def schedule(self, sch, block, epilogues) -> None:
        raise NotImplementedError

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline(sch, normalize_prim_func(sch) or [])
        reductions = [i for i in infos if i.is_reduction()]
        if len(reductions) != 1 or infos[0] is not reductions[0] or \
                any(not i.is_injective() for i in infos[1:]):
            return None
        block = reductions[0]
        kinds = block.dom_kind()
        spatial = [i.dom for i in block.iters if i.kind == "S"]
        reduce = [i.dom for i in block.iters if i.kind == "R"]
        if kinds.rstrip("R") != kinds.replace("R", "") or \
                any(not isinstance(d, int) for d in spatial + reduce) or \
                not self.accepts(int(np.prod(spatial)), int(np.prod(reduce))):
            return None
        try:
            self.schedule(sch, block, infos[1:])
        except s_tir.ScheduleError:
            return None
        return sch


class ShortReduction(_ReductionRule):
    """At most `SHORT_REDUCTION_STEPS` steps per output: one output per thread, its sum in a
    register, the epilogue in the same thread."""

    def accepts(self, outputs, steps):
        return steps <= SHORT_REDUCTION_STEPS

    def schedule(self, sch, block, epilogues):
        spatial = [i.loop_rv for i in block.iters if i.kind == "S"]
        bx, tx = sch.split(_fused(sch, spatial), [None, THREADS])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        for epilogue in reversed(epilogues):
            sch.reverse_compute_at(epilogue.block_rv, tx, preserve_unit_loops=True)
        sch.set_scope(block.block_rv, 0, "local")


class WarpReduction(_ReductionRule):
    """At least `LONG_REDUCTION_STEPS` steps and at most `FEW_OUTPUTS` outputs: a warp per output
    (`WARP_OUTPUTS_PER_BLOCK` warps per block), the reduction split over the 32 lanes, each lane
    summing its share in a register before TVM's cross-thread reduction combines them; lane 0
    runs the epilogue."""

    def accepts(self, outputs, steps):
        return outputs <= FEW_OUTPUTS and steps >= LONG_REDUCTION_STEPS

    def schedule(self, sch, block, epilogues):
        spatial = [i.loop_rv for i in block.iters if i.kind == "S"]
        reduce = [i.loop_rv for i in block.iters if i.kind == "R"]
        bx, ty = sch.split(_fused(sch, spatial), [None, WARP_OUTPUTS_PER_BLOCK])
        serial, tx = sch.split(_fused(sch, reduce), [None, WARP])
        sch.reorder(bx, ty, tx, serial)
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.set_scope(block.block_rv, 0, "local")
        for epilogue in reversed(epilogues):
            sch.reverse_compute_at(epilogue.block_rv, ty, preserve_unit_loops=True)
            loops = sch.get_loops(epilogue.block_rv)[2:]
            _, lane = sch.split(_fused(sch, loops), [None, WARP])  # lane 0 only
            sch.bind(lane, "threadIdx.x")


def rules() -> list:
    """DLight's default GPU rules (TVM's CUDA pipeline) with ours: `WarpReduction` before the
    matmul rule, `ShortReduction` before the reduction rules."""
    return [WarpReduction(), dl.gpu.Matmul(), dl.gpu.GEMV(), ShortReduction(),
            dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def cuda_pipeline(target: tvm.target.Target):
    """TVM's CUDA pipeline with `rules()` as its DLight schedule step."""
    from tvm.relax.backend.cuda import pipeline as cuda

    legalize = cuda.legalize_passes(target)
    if type(legalize[-1]).__name__ != "ApplyDefaultSchedule":  # TVM 0.27's order; fail loudly
        raise RuntimeError("tvm.relax.backend.cuda.legalize_passes no longer ends with DLight's "
                           "ApplyDefaultSchedule: update pipeline/gpu_schedules.py")

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            passes = (cuda.library_dispatch_passes(target) + legalize[:-1]
                      + [dl.ApplyDefaultSchedule(*rules())]
                      + cuda.dataflow_lower_passes(target) + cuda.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
