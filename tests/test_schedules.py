"""Default CPU schedules: same results as the unscheduled module, and really scheduled."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline import data
from pipeline.models.registry import tiny_cnn
from pipeline.quantize import QConfig, quantize_with_report
from pipeline.relax_import import keras_to_relax
from pipeline.relax_io import ENTRY, weight_params
from pipeline.schedules import ParallelVectorize, default_pipeline

MODEL = {"input_size": 32, "preprocess": {"crop_fraction": 1.0, "resize": "bilinear",
                                          "channel_order": "rgb", "mean": [127.5] * 3, "std": [127.5] * 3}}
TARGET = tvm.target.Target({"kind": "llvm"})


@pytest.fixture(scope="module")
def modules():
    mod, weights = keras_to_relax(tiny_cnn(32, 0))
    crops, _ = data.crop_sets({"seed": 0, "calibration_size": 8, "evaluation_size": 1,
                               "min_crop": 0.6, "flip": True})
    x = data.crop_inputs(crops, MODEL)
    qmod, qweights, _, _ = quantize_with_report(mod, weights, x, QConfig())
    return {"fp32": (mod, weights), "int8": (qmod, qweights)}, x


def _run(executable, mod, weights, xs):
    vm = relax.VirtualMachine(executable, tvm.cpu())
    args = [tvm.runtime.tensor(weights[p.name]) for p in weight_params(mod)]
    return np.concatenate([vm[ENTRY](tvm.runtime.tensor(x[None]), *args).numpy() for x in xs])


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_scheduled_module_is_bit_identical_to_unscheduled(modules, variant):
    (mod, weights), x = modules[0][variant], modules[1]
    x = np.concatenate([x, np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)])
    plain = _run(tvm.compile(mod, TARGET), mod, weights, x)
    scheduled = _run(tvm.compile(mod, TARGET, relax_pipeline=default_pipeline(TARGET)), mod, weights, x)
    np.testing.assert_array_equal(scheduled, plain)


def test_every_fused_function_gets_parallel_and_vector_loops(modules):
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight as dl

    mod = modules[0]["int8"][0]
    with TARGET:
        lowered = tvm.transform.Sequential(cpu.legalize_passes(TARGET))(mod)
        scheduled = dl.ApplyDefaultSchedule(ParallelVectorize())(lowered)
    funcs = {gv.name_hint: f.script() for gv, f in scheduled.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc)}
    convs = {n: t for n, t in funcs.items() if "conv2d" in n or "matmul" in n}
    assert convs and all("T.parallel" in t for t in convs.values()), sorted(convs)
    assert sum("T.vectorized" in t for t in funcs.values()) >= len(funcs) // 2


def test_symbolic_shapes_keep_generic_code_and_other_targets_are_left_alone():
    from tvm import tirx

    n = tirx.Var("n", "int64")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    mod = bb.get()
    executable = tvm.compile(mod, TARGET, relax_pipeline=default_pipeline(TARGET))
    y = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(-np.ones((3, 8), "float32")))
    np.testing.assert_array_equal(y.numpy(), np.zeros((3, 8), "float32"))

    from tvm.relax.backend.cpu_generic import pipeline as cpu
    with TARGET:
        lowered = tvm.transform.Sequential(cpu.legalize_passes(TARGET))(mod)
    prim = next(f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    sch = ParallelVectorize().apply(prim, TARGET, False)
    assert sch is not None and "T.parallel" not in sch.mod.script()  # symbolic extent: untouched
    assert ParallelVectorize().apply(prim, tvm.target.Target({"kind": "cuda"}), False) is None
