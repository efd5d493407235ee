"""The cuda target: builds here without a GPU (DLight's GPU kernels, compiled to GPU code beside
model.so), and a machine without a GPU refuses to run it with a clear error.

Running the builds on a GPU is `benchmarks/gpu_runtime.py` (see benchmarks/README.md)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import data
from pipeline.compile import cuda_compiler
from pipeline.errors import TvmqError

ROOT = Path(__file__).resolve().parent.parent
CUDA = yaml.safe_load((ROOT / "conf/target/cuda.yaml").read_text())
HAVE_COMPILER = cuda_compiler() is not None
needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no CUDA compiler (nvcc or NVRTC)")
MODEL = {"input_size": 32, "preprocess": {"crop_fraction": 1.0, "resize": "bilinear",
                                          "channel_order": "rgb", "mean": [127.5] * 3,
                                          "std": [127.5] * 3}}


def _gpu_present() -> bool:
    import tvm

    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001  (no driver: TVM's CUDA runtime is not even loaded)
        return False


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """variant -> (build folder, module, weights): the tiny CNN for the cuda target, fp32 and
    int8, as the build stage makes them."""
    from pipeline.compile import export
    from pipeline.models.registry import tiny_cnn
    from pipeline.quantize import QConfig, quantize_with_report
    from pipeline.relax_import import keras_to_relax

    if not HAVE_COMPILER:
        pytest.skip("no CUDA compiler (nvcc or NVRTC)")
    mod, weights = keras_to_relax(tiny_cnn(32, 0))
    crops, _ = data.crop_sets({"seed": 0, "calibration_size": 8, "evaluation_size": 1,
                               "min_crop": 0.6, "flip": True})
    qmod, qweights, _, _ = quantize_with_report(mod, weights, data.crop_inputs(crops, MODEL),
                                                QConfig())
    folders = {}
    for variant, (m, w) in {"fp32": (mod, weights), "int8": (qmod, qweights)}.items():
        folder = tmp_path_factory.mktemp(variant)
        export(folder, m, w, CUDA, variant)
        folders[variant] = (folder, m, w)
    return folders


def test_make_target_reads_arch_and_requires_it():
    from pipeline.compile import make_target

    target = make_target(CUDA)
    assert target.kind.name == "cuda" and str(target.attrs["arch"]) == "sm_90"
    with pytest.raises(TvmqError, match=r"needs `arch`.*target\.arch=sm_80"):
        make_target({**CUDA, "arch": None})


def test_cuda_target_refuses_schedules_none():
    from pipeline.compile import build, make_target

    with pytest.raises(TvmqError, match="schedules='none' is CPU-only"):
        build(None, make_target(CUDA), "none")


@needs_compiler
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_build_stores_gpu_code_for_its_cuda_source(builds, variant):
    """Built here without a GPU, model.so keeps the kernels' CUDA source (TVM compiles it when a
    GPU machine loads the library); export compiles it here and stores the GPU code under the
    source's sha256, which a second build of the same module reproduces."""
    from pipeline.compile import build, cuda_sources, make_target, specialize

    folder, mod, weights = builds[variant]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert json.loads(manifest["target"])["arch"] == "sm_90"
    assert "dev = tvm.cuda()" in manifest["how_to_run"]
    assert not any(manifest["packed_conv2d"].values())  # packed kernels are CPU-only
    [kernels] = manifest["cuda_kernels"]
    code = (folder / kernels["file"]).read_bytes()
    assert len(code) > 1000 and not code.startswith(b"//")  # GPU code, not PTX text
    target = make_target(CUDA)
    [source] = cuda_sources(build(specialize(mod, weights, target, "default")[0], target))
    assert "__global__" in source
    assert hashlib.sha256(source.encode()).hexdigest() == kernels["sha256"]


@needs_compiler
def test_runner_compile_callback_returns_the_stored_gpu_code(builds):
    """The callback TVM calls to compile a cross-built library's CUDA source hands back the
    build's stored code for that source (no compiler needed on the GPU machine) and compiles
    only source it has no code for."""
    import tvm_ffi

    from pipeline.compile import build, cuda_sources, make_target
    from pipeline.runner import nvrtc_compiler, register_cuda_compiler

    folder, mod, _ = builds["int8"]
    [kernels] = json.loads((folder / "manifest.json").read_text())["cuda_kernels"]
    stored = folder / kernels["file"]
    [source] = cuda_sources(build(mod, make_target(CUDA)))
    register_cuda_compiler(nvrtc_compiler("sm_90"), {kernels["sha256"]: stored})
    callback = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    assert bytes(callback(source)) == stored.read_bytes()
    compiled = []  # source it has no code for goes to the compiler
    register_cuda_compiler(lambda code: compiled.append(code) or b"code",
                           {kernels["sha256"]: stored})
    callback = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    assert bytes(callback("// another kernel\n" + source)) == b"code"
    assert bytes(callback(source)) == stored.read_bytes()
    assert compiled == ["// another kernel\n" + source]


def test_runner_without_gpu_says_what_to_do(builds):
    from pipeline.runner import Runner

    if _gpu_present():
        pytest.skip("this machine has a GPU: benchmarks/gpu_runtime.py runs the builds")
    with pytest.raises(TvmqError, match=r"target 'cuda' runs on an NVIDIA GPU.*target=x86_avx512"):
        Runner(builds["fp32"][0])


def test_runner_names_missing_gpu_code(builds, tmp_path):
    from pipeline.runner import Runner

    copy = tmp_path / "fp32"
    shutil.copytree(builds["fp32"][0], copy)
    [kernels] = json.loads((copy / "manifest.json").read_text())["cuda_kernels"]
    (copy / kernels["file"]).unlink()
    with pytest.raises(TvmqError, match=rf"{kernels['file']} .*is missing: copy the whole build"):
        Runner(copy)


def _conv_script(shape, weight, groups, rule_list) -> str:
    """TVMScript of a conv2d + ReLU kernel (NCHW, stride 1, same padding) after TVM's CUDA
    legalization and `rule_list`."""
    import tvm
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cuda
    from tvm.s_tir import dlight as dl

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    w = relax.Var("w", relax.TensorType(weight, "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, padding=weight[2] // 2, groups=groups))
            z = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(z)
    target = tvm.target.Target({"kind": "cuda", "arch": CUDA["arch"]})
    with target:
        mod = tvm.transform.Sequential(cuda.legalize_passes(target)[:-1])(bb.get())
        mod = dl.ApplyDefaultSchedule(*rule_list)(mod)  # updates `mod` in place, returns it
    [conv] = [f for gv, f in mod.functions_items()
              if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]
    return conv.script()


def _dlight_alone():
    from pipeline.gpu_schedules import ShortReduction, WarpReduction, rules

    return [r for r in rules() if not isinstance(r, (ShortReduction, WarpReduction))]


def test_depthwise_conv_runs_one_output_per_thread():
    """TVM's DLight rules give a depthwise conv to GeneralReduction (a 256-thread block per
    output, reduced through shared memory); with `ShortReduction` each thread computes one
    output in a register and applies the epilogue itself."""
    from pipeline.gpu_schedules import rules

    depthwise = ((1, 32, 16, 16), (32, 1, 3, 3), 32)
    assert 'scope="shared"' in _conv_script(*depthwise, _dlight_alone())
    ours = _conv_script(*depthwise, rules())
    assert 'scope="shared"' not in ours and 'scope="local"' in ours
    assert 'thread="threadIdx.x"' in ours and "T.int64(256)" in ours
    assert ours.count("T.thread_binding") == 2  # blockIdx.x and threadIdx.x, nothing else


def test_small_map_1x1_conv_gets_a_warp_per_output():
    """A 1x1 conv over 1152 channels at 7x7 (9408 outputs): DLight's matmul tiles (shared
    memory) without `WarpReduction`; with it, a warp per output splits the 1152 steps over its
    lanes (threadIdx.x over the reduction) and lane 0 runs the epilogue. A 1x1 conv with many
    outputs keeps the matmul rule."""
    from pipeline.gpu_schedules import FEW_OUTPUTS, rules

    small_map = ((1, 1152, 7, 7), (192, 1152, 1, 1), 1)
    assert 'scope="shared"' in _conv_script(*small_map, _dlight_alone())
    ours = _conv_script(*small_map, rules())
    assert 'scope="shared"' not in ours and 'scope="local"' in ours
    assert 'thread="threadIdx.y"' in ours
    assert "T.axis.reduce(T.int64(1152), ax3_0 * T.int64(32) + ax3_1)" in ours
    assert "< T.int64(1))" in ours  # the epilogue's lane-0 predicate
    large_map = ((1, 64, 56, 56), (64, 64, 1, 1), 1)
    assert 64 * 56 * 56 > FEW_OUTPUTS
    assert _conv_script(*large_map, rules()) == _conv_script(*large_map, _dlight_alone())
