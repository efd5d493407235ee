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
from .runner import (CUDA_IEEE_OPTIONS, GPU_KINDS, device_name, nvrtc_compiler,
                     register_cuda_compiler)

LIBRARY_FILE = "model.so"
MANIFEST_FILE = "manifest.json"


def make_target(target_cfg: dict) -> tvm.target.Target:
    """A TVM 0.27 target from the `target` params section (JSON-dict form): `mcpu` for llvm,
    `arch` (e.g. sm_90) for cuda."""
    kind = target_cfg["kind"]
    spec = {"kind": kind}
    for key in ("mcpu", "arch"):
        if target_cfg.get(key):
            spec[key] = target_cfg[key]
    if kind in GPU_KINDS and not spec.get("arch"):
        raise TvmqError(f"target '{target_cfg.get('name', kind)}' (kind {kind}) needs `arch`, the "
                        "GPU's compute capability (sm_90 for H100/H200, sm_80 for A100, sm_89 "
                        "for L4): `-S target.arch=sm_80`.")
    return tvm.target.Target(spec)


def is_gpu(target: tvm.target.Target) -> bool:
    return target.kind.name in GPU_KINDS


def cuda_compiler() -> str | None:
    """The CUDA compiler a build uses: "nvrtc" where `cuda-bindings` is installed, else "nvcc"
    where a CUDA toolkit's nvcc is on PATH, else None. Neither needs a GPU."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("cuda") and importlib.util.find_spec("cuda.bindings"):
        return "nvrtc"
    return "nvcc" if shutil.which("nvcc") else None


def compile_cuda_kernels(source: str, target: tvm.target.Target) -> bytes:
    """GPU code for the target's `arch` from a build's CUDA source, with IEEE float arithmetic
    (`runner.CUDA_IEEE_OPTIONS`), by `cuda_compiler()`."""
    import os

    from tvm.support import nvcc

    arch = str(target.attrs["arch"])
    compiler = cuda_compiler()
    if compiler == "nvrtc":
        return nvrtc_compiler(arch)(source)
    if compiler is None:
        raise TvmqError(f"target '{target.kind.name}' ({arch}): building needs a CUDA compiler, "
                        "nvcc on PATH (a CUDA toolkit, e.g. /usr/local/cuda/bin) or NVRTC "
                        "(`pip install cuda-bindings nvidia-cuda-nvrtc`); no GPU is needed.")
    saved = os.environ.get("TVM_CUDA_NVCC_NO_FAST_MATH")
    os.environ["TVM_CUDA_NVCC_NO_FAST_MATH"] = "1"  # TVM's nvcc call adds --use_fast_math unless
    try:
        with target:
            return bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=arch,
                                           options=CUDA_IEEE_OPTIONS, compiler="nvcc"))
    finally:
        if saved is None:
            del os.environ["TVM_CUDA_NVCC_NO_FAST_MATH"]
        else:
            os.environ["TVM_CUDA_NVCC_NO_FAST_MATH"] = saved


def cuda_sources(executable) -> list[str]:
    """The CUDA source of each device module a build left uncompiled (TVM compiles at build
    time only where its CUDA runtime is loaded, i.e. on a machine with a GPU)."""
    sources, stack = [], [executable.mod]
    while stack:
        module = stack.pop()
        stack.extend(module.imports)
        if module.kind == "cuda":
            source = module.inspect_source("cuda")
            if source:
                sources.append(source)
    return sources


def _export_cuda_kernels(folder: Path, executable, target: tvm.target.Target) -> list[dict]:
    """Compile the build's CUDA source here and store the GPU code beside `model.so`, keyed by
    the source's sha256: the GPU machine's `Runner` loads it instead of compiling (which took
    13-15 s per load of EfficientNet-Lite0 on an H100, and needs NVRTC there). Compiling here
    also fails a bad kernel now, not on the GPU machine."""
    import hashlib

    kernels = []
    for i, source in enumerate(cuda_sources(executable)):
        name = f"kernels{i}.{target.attrs['arch']}.bin"
        (folder / name).write_bytes(compile_cuda_kernels(source, target))
        kernels.append({"file": name, "sha256": hashlib.sha256(source.encode()).hexdigest()})
    return kernels


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
HOW_TO_RUN = ("from tvm.runtime.vm import VirtualMachine; lib = tvm.runtime.load_module("
              "library); dev = {device}; vm = VirtualMachine(lib, dev); p = "
              "tvm.runtime.load_param_dict(open(params_file,'rb').read()); vm[entry]("
              "tvm.runtime.tensor(x, dev), *[p[q['name']].copyto(dev) for q in params]).numpy()")


def build(mod: tvm.IRModule, target: tvm.target.Target, schedules: str = "default",
          tuning_dir: Path | None = None, cuda_graph: bool = False):
    """relax's CPU pipeline (legalize, fuse, lower) and codegen for `target`.

    schedules="default" applies `schedules.PackedConvSchedule` to the `packed_conv` kernels
    (see `specialize`) and `schedules.ParallelVectorize` to every other fused kernel on llvm
    targets; kernels with a record in the MetaSchedule database `tuning_dir` (`tuning.tune`)
    get their tuned schedule instead. "none" keeps TVM's generic single-threaded loops.
    On a GPU target "default" is TVM's own CUDA pipeline with DLight's GPU rules (matmul, GEMV,
    reductions, and a fallback that binds any other kernel's loops to blocks and threads) plus
    `gpu_schedules`' two (depthwise convs; 1x1 convs on small maps); `cuda_graph` captures the
    kernel launches of a call in a CUDA graph replayed on later calls.
    """
    if schedules not in SCHEDULES:
        raise TvmqError(f"target.schedules='{schedules}' is invalid: use {' | '.join(SCHEDULES)}.")
    if is_gpu(target):
        if schedules != "default":
            raise TvmqError(f"target.schedules='{schedules}' is CPU-only: GPU kernels must have "
                            f"their loops bound to threads, so a {target.kind.name} target "
                            "builds with schedules: default (DLight's GPU rules).")
        # used where TVM compiles at build time (a machine with a GPU)
        register_cuda_compiler(lambda code: compile_cuda_kernels(code, target))
        from .gpu_schedules import cuda_pipeline

        with tvm.transform.PassContext(config={"relax.backend.use_cuda_graph": cuda_graph}):
            return tvm.compile(mod, target, relax_pipeline=cuda_pipeline(target))
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
    executable = build(built, target, schedules, tuning_dir, bool(target_cfg.get("cuda_graph")))
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
        "how_to_run": HOW_TO_RUN.format(device=f"tvm.{device_name(target_cfg)}()"),
    }
    if is_gpu(target):
        manifest["cuda_kernels"] = _export_cuda_kernels(folder, executable, target)
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest
