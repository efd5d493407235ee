"""Scratch buffers of parallel tasks on the stack instead of TVM's workspace pool.

TVM lowers every kernel-internal buffer of 1 KiB or more, and every "local" one, to a
`TVMBackendAllocWorkspace` / `TVMBackendFreeWorkspace` pair (`tirx.LowerTVMBuiltin`). Inside a
parallel loop that pair runs once per task: a packed convolution's per-tile accumulator or row
copy costs two calls into the runtime's pool for a few KiB it uses for microseconds
(EfficientNet-Lite0 int8: ~9,400 pairs per inference). `StackScratch` marks such buffers with
the `disable_lower_builtin` annotation, which `LowerTVMBuiltin` leaves to the LLVM codegen as
an `alloca` in the task's own frame. Buffers outside parallel loops (once per call) and large
ones stay in the pool, so a task's frame stays small next to a thread's 8 MiB stack.

`PIPELINE` names TVM's default TIR pipeline with this pass before `LowerTVMBuiltin`
(`tvm.compile(..., tir_pipeline=PIPELINE)`).
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.tirx import compilation_pipeline

PIPELINE = "tvmq_stack_scratch"
# Per kernel, the most bytes of parallel-task scratch moved to the stack.
STACK_BYTES = 32 * 1024
_ANNOTATION = "disable_lower_builtin"


def _const_bytes(buffer) -> int | None:
    size = tvm.DataType(buffer.dtype).bits * tvm.DataType(buffer.dtype).lanes // 8
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        size *= int(extent)
    return size


def _stack_scratch(func: tirx.PrimFunc, limit: int) -> tirx.PrimFunc:
    left = [limit]

    def to_stack(alloc):
        size = _const_bytes(alloc.buffer)
        if size is None or size > left[0] or _ANNOTATION in alloc.annotations:
            return alloc
        left[0] -= size
        notes = {**alloc.annotations, _ANNOTATION: tirx.IntImm("int32", 1)}
        return tirx.AllocBuffer(alloc.buffer, notes)

    def in_parallel(loop):
        if loop.kind != tirx.ForKind.PARALLEL:
            return loop
        return tvm_ffi.structural_map(loop, (tirx.AllocBuffer, to_stack))

    body = tvm_ffi.structural_map(func.body, (tirx.For, in_parallel), order="pre")
    return func if body.same_as(func.body) else func.with_body(body)


def StackScratch(limit: int = STACK_BYTES) -> tvm.transform.Pass:  # noqa: N802 (TVM pass style)
    """Put each kernel's parallel-task buffers, up to `limit` bytes in all, on the stack."""

    @tirx.transform.prim_func_pass(opt_level=0, name="tvmq.StackScratch")
    def _pass(func, _mod, _ctx):
        return _stack_scratch(func, limit)

    return _pass


def _pipeline():
    lower, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("default")

    def host_passes():
        return tvm.transform.Sequential([StackScratch(), finalize_host()])

    return lower, host_passes, finalize_device


compilation_pipeline.register_tir_pipeline(PIPELINE, _pipeline)
