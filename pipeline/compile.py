"""Compile a Relax module for a target and export it with a manifest plain TVM can run.

The exported folder holds `model.so` (`export_library`), `model.params` and `manifest.json`;
`manifest.json` names inputs, weights (in call order) and outputs with shapes and dtypes, so
`tvm.runtime.load_module` + `relax.VirtualMachine` run it without tvmq (see README).
The manifest holds no timing or other run-dependent value, so it is byte-identical across runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .atomic import write_json
from .errors import TvmqError
from .relax_import import op_counts
from .relax_io import ENTRY, num_inputs, save_params, weight_params

LIBRARY_FILE = "model.so"
MANIFEST_FILE = "manifest.json"


def make_target(target_cfg: dict) -> tvm.target.Target:
    """A TVM 0.27 target from the `target` params section (JSON-dict form)."""
    spec = {"kind": target_cfg["kind"]}
    if target_cfg.get("mcpu"):
        spec["mcpu"] = target_cfg["mcpu"]
    return tvm.target.Target(spec)


def _tensor_spec(name: str, ty) -> dict:
    return {"name": name, "shape": [int(d) for d in ty.shape], "dtype": str(ty.dtype)}


def op_list(mod: tvm.IRModule) -> list[dict]:
    """Every op call in `main`, in program order, with its output shape and dtype."""
    calls = []

    @relax.expr_functor.visitor
    class Lister(relax.PyExprVisitor):
        def visit_var_binding_(self, binding):
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                ty = binding.var.ty
                entry = {"op": value.op.name, "out": binding.var.name}
                if isinstance(ty, relax.TensorType):
                    entry.update(shape=[int(d) for d in ty.shape], dtype=str(ty.dtype))
                calls.append(entry)

    Lister().visit_expr(mod[ENTRY])
    return calls


def packed_kernels(mod: tvm.IRModule) -> dict[str, int]:
    """How many ops run as `packed_conv` kernels, per kind (float32 conv2d, uint8 x int8
    conv2d, depthwise, uint8 x int8 dense, float32 dense)."""
    from .packed_conv import KERNEL_NAMES

    counts = {name: 0 for name in KERNEL_NAMES}
    for block in mod[ENTRY].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                    and value.op.name == "relax.call_tir"):
                hint = value.args[0].name_hint
                for name in KERNEL_NAMES:
                    counts[name] += hint.startswith(name)
    return counts


SCHEDULES = ("default", "none")


def build(mod: tvm.IRModule, target: tvm.target.Target, schedules: str = "default",
          tuning_dir: Path | None = None):
    """relax's CPU pipeline (legalize, fuse, lower) and codegen for `target`.

    schedules="default" applies `schedules.PackedConvSchedule` to the `packed_conv` kernels
    (see `specialize`) and `schedules.ParallelVectorize` to every other fused kernel on llvm
    targets; kernels with a record in the MetaSchedule database `tuning_dir` (`tuning.tune`)
    get their tuned schedule instead. "none" keeps TVM's generic single-threaded loops.
    """
    if schedules not in SCHEDULES:
        raise TvmqError(f"target.schedules='{schedules}' is invalid: use {' | '.join(SCHEDULES)}.")
    if schedules == "default" and target.kind.name == "llvm":
        from .schedules import default_pipeline
        from .stack_scratch import PIPELINE
        from .tuning import has_records

        tuned = tuning_dir if has_records(tuning_dir) else None
        return tvm.compile(mod, target, relax_pipeline=default_pipeline(target, tuned),
                           tir_pipeline=PIPELINE)
    return tvm.compile(mod, target)


def has_vnni(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm" and bool(
        tvm.target.codegen.target_has_features("avx512vnni", target))


def has_amx(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm" and bool(
        tvm.target.codegen.target_has_features("amx-int8", target))


def specialize(mod: tvm.IRModule, weights: dict[str, np.ndarray], target: tvm.target.Target,
               schedules: str):
    """The module and weights a build runs: with default schedules on CPU, conv2d weights are
    packed for `packed_conv` (uint8 x int8 convs only where the target has AVX512-VNNI; the
    larger ones on AMX tiles where it has AMX, see `packed_conv.amx_conv`), and requantize
    epilogues round and convert in one instruction (`requantize.fuse_requantize`)."""
    if schedules == "default" and target.kind.name == "llvm":
        from .packed_conv import pack_convolutions
        from .requantize import fuse_requantize

        mod, weights = pack_convolutions(mod, weights, int8=has_vnni(target), amx=has_amx(target))
        return fuse_requantize(mod), weights
    return mod, weights


def cpu_vm(mod: tvm.IRModule, weights: dict[str, np.ndarray],
           target: tvm.target.Target | None = None):
    """(VirtualMachine, weight arguments) for running `mod` in this process on the CPU, built
    with the default schedules (packed convolutions) for `target` (generic llvm by default, so
    calibration gives the same numbers on every x86 machine)."""
    target = target or tvm.target.Target("llvm")
    mod, weights = specialize(mod, weights, target, "default")
    vm = relax.VirtualMachine(build(mod, target), tvm.cpu())
    return vm, [tvm.runtime.tensor(weights[p.name]) for p in weight_params(mod)]


def export(folder: Path, mod: tvm.IRModule, weights: dict[str, np.ndarray], target_cfg: dict,
           variant: str, tuning_dir: Path | None = None) -> dict:
    """Build `mod` and write model.so, model.params and manifest.json into `folder`; kernels
    with a record in the MetaSchedule database `tuning_dir` get their tuned schedule.

    Call it on a fresh folder (the stage's `atomic_dir`), so a failed build leaves nothing.
    """
    from .tuning import summary

    folder = Path(folder)
    target = make_target(target_cfg)
    schedules = target_cfg.get("schedules", "default")
    built, weights = specialize(mod, weights, target, schedules)
    executable = build(built, target, schedules, tuning_dir)
    executable.export_library(str(folder / LIBRARY_FILE))
    save_params(folder / "model.params", weights)
    func = built[ENTRY]
    n_in = num_inputs(built)
    manifest = {
        "variant": variant,
        "entry": ENTRY,
        "library": LIBRARY_FILE,
        "params_file": "model.params",
        "target": str(target),
        "target_config": target_cfg,
        "schedules": schedules,
        "tvm_version": tvm.__version__,
        "inputs": [_tensor_spec(p.name, p.ty) for p in func.params[:n_in]],
        "params": [_tensor_spec(p.name, p.ty) for p in weight_params(built)],
        "outputs": [_tensor_spec("logits", func.ret_ty)],
        "op_counts": op_counts(mod),
        "ops": op_list(mod),
        "packed_conv2d": packed_kernels(built),
        "tuning": summary(tuning_dir),
        "how_to_run": "lib = tvm.runtime.load_module(library); vm = relax.VirtualMachine(lib, "
                      "tvm.cpu()); p = tvm.runtime.load_param_dict(open(params_file,'rb').read()); "
                      "vm[entry](x, *[p[q['name']] for q in params])",
    }
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest
