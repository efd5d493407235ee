"""GPU kernels for the cuda target: TVM's DLight rules, plus one for convolutions with short
reductions (depthwise), which DLight otherwise gives to its GeneralReduction rule.

GeneralReduction spends one 256-thread block per output element and reduces across threads: for
a 3x3 depthwise conv that is 9 busy threads of 256 and a shared-memory reduction per output
(EfficientNet-Lite0 on an H100: 3x3 x 144 channels at 56x56 took 358 us, its depthwise convs
~1.35 ms of a 2.6 ms call). `ShortReduction` runs one output per thread instead, its sum in a
register and its epilogue in the same thread (Lite0 on the H100: fp32 2.59 -> 0.82 ms, int8
2.29 -> 0.49 ms). Each sum runs in the unscheduled order, so int8 results stay bit-identical
to the unscheduled module.
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


def _reduction_steps(func: tirx.PrimFunc) -> list[int | None]:
    """Steps per output of each reduction block in `func` (None: not a constant)."""
    infos = normalize_prim_func(s_tir.Schedule(func)) or []
    steps = []
    for info in infos:
        doms = [i.dom for i in info.iters if i.kind == "R"]
        if doms:
            steps.append(None if any(not isinstance(d, int) for d in doms)
                         else int(np.prod(doms)))
    return steps


class ShortReduction(GPUScheduleRule):
    """A kernel with one reduction block of at most `SHORT_REDUCTION_STEPS` steps per output
    (after inlining its producers, e.g. the padding) and elementwise epilogues: one output per
    thread, its sum in a register, the epilogue in the same thread."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        steps = _reduction_steps(func)
        if len(steps) != 1 or steps[0] is None or steps[0] > SHORT_REDUCTION_STEPS:
            return None
        sch = s_tir.Schedule(func)
        infos = try_inline(sch, normalize_prim_func(sch) or [])
        reductions = [i for i in infos if i.is_reduction()]
        if len(reductions) != 1 or infos[0] is not reductions[0] or \
                any(not i.is_injective() for i in infos[1:]):
            return None
        block = reductions[0]
        kinds = block.dom_kind()
        if kinds.rstrip("R") != kinds.replace("R", ""):  # spatial loops first, then reductions
            return None
        spatial = [i.loop_rv for i in block.iters if i.kind == "S"]
        try:
            fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
            bx, tx = sch.split(fused, [None, THREADS])
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
            for epilogue in reversed(infos[1:]):
                sch.reverse_compute_at(epilogue.block_rv, tx, preserve_unit_loops=True)
            sch.set_scope(block.block_rv, 0, "local")
        except s_tir.ScheduleError:
            return None
        return sch


def rules() -> list:
    """DLight's default GPU rules (TVM's CUDA pipeline), with `ShortReduction` before the
    reduction rules."""
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), ShortReduction(), dl.gpu.Reduction(),
            dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


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
