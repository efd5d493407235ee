"""stack_scratch: parallel tasks keep their scratch buffers on the stack, not in TVM's pool."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.script import tirx as T

from pipeline.compile import build, specialize
from pipeline.stack_scratch import PIPELINE, STACK_BYTES, StackScratch

from test_packed_conv import X86, conv_model

WORKSPACE = "TVMBackendAllocWorkspace"


@T.prim_func
def mirror_rows(a: T.Buffer((8, 1024), "float32"), b: T.Buffer((8, 1024), "float32")):
    T.func_attr({"global_symbol": "mirror_rows", "tirx.noalias": True})
    whole = T.alloc_buffer((8192,), "float32")  # once per call: stays in the pool
    for i in T.parallel(8):
        row = T.alloc_buffer((1024,), "float32")  # 4 KiB per task: the stack
        big = T.alloc_buffer((STACK_BYTES // 4,), "float32")  # over the budget left: the pool
        for j in range(1024):
            row[j] = a[i, j] * T.float32(2.0)
        for j in range(STACK_BYTES // 4):
            big[j] = row[j % 1024] + T.float32(1.0)
        for j in range(1024):
            whole[i * 1024 + j] = big[STACK_BYTES // 4 - 1 - j] + row[j]
    for k in range(8192):
        b[k // 1024, k % 1024] = whole[k]


def _annotated(func) -> dict[str, bool]:
    found = {}

    def visit(alloc):
        found[alloc.buffer.name] = "disable_lower_builtin" in alloc.annotations
        return alloc

    tvm_ffi.structural_map(func.body, (tvm.tirx.AllocBuffer, visit))
    return found


def test_only_parallel_task_buffers_within_the_budget_go_on_the_stack():
    flat = tvm.IRModule({"mirror_rows": mirror_rows})
    marked = StackScratch()(flat)["mirror_rows"]
    assert _annotated(marked) == {"whole": False, "row": True, "big": False}
    assert _annotated(StackScratch(limit=1024)(flat)["mirror_rows"])["row"] is False


def test_stack_pipeline_builds_the_same_results_without_pool_calls_in_tasks():
    a = np.random.default_rng(0).standard_normal((8, 1024)).astype("float32")
    target = tvm.target.Target("llvm")
    results, calls = {}, {}
    for pipeline in ("default", PIPELINE):
        lib = tvm.compile(tvm.IRModule({"mirror_rows": mirror_rows}), target,
                          tir_pipeline=pipeline)
        out = tvm.runtime.tensor(np.zeros_like(a))
        lib["mirror_rows"](tvm.runtime.tensor(a), out)
        results[pipeline] = out.numpy()
        (task,) = _task_functions(lib.mod.inspect_source("ll"))
        calls[pipeline] = task.count(f"@__{WORKSPACE}")
    np.testing.assert_array_equal(results[PIPELINE], results["default"])
    np.testing.assert_array_equal(results[PIPELINE], a[:, ::-1] * 2 + 1 + a * 2)
    assert calls == {"default": 2, PIPELINE: 1}  # `row` on the stack, `big` in the pool


def _task_functions(llvm_ir: str) -> list[str]:
    """The LLVM functions a parallel loop's tasks run."""
    return [f for f in re.split(r"\ndefine ", llvm_ir)
            if "@__tvm_parallel_lambda" in f.split("\n", 1)[0]]


# (in channels, out channels, size, kernel, stride, padding, groups), as in test_packed_conv
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("case", [(24, 24, 17, 3, 1, 1, 24), (32, 48, 14, 1, 1, 0, 1),
                                  (16, 32, 64, 1, 1, 0, 1), (160, 24, 32, 1, 1, 0, 1),
                                  (16, 32, 28, 3, 1, 1, 1)],
                         ids=["depthwise", "pointwise", "pointwise_64x64", "long_reduction",
                              "conv3x3"])
def test_packed_kernels_allocate_nothing_per_task(int8, case):
    """Built with the default schedules, no parallel task of a packed conv calls the pool:
    accumulator tiles and row copies are stack buffers (one call pair per task before), and a
    1x1 conv over whole vectors of positions (64x64) runs its epilogue per position block, so
    its tasks hold one block of sums, not 8 channels x 4096 positions (128 KiB)."""
    mod, _, weights = conv_model(int8, *case)
    mod, _ = specialize(mod, weights, X86, "default")
    llvm_ir = build(mod, X86, "default").mod.imports[0].inspect_source("ll")
    tasks = _task_functions(llvm_ir)
    assert tasks
    assert not [t.split("(")[0] for t in tasks if WORKSPACE in t]
