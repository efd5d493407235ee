"""Load an exported build folder with plain TVM runtime APIs and run or time it."""
from __future__ import annotations

import ctypes
import functools
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import TvmqError

GPU_KINDS = ("cuda",)  # target kinds whose builds run on a GPU (the rest on the CPU)
# CUDA compiler options, after TVM's --use_fast_math: IEEE float arithmetic (no fused multiply-add,
# exact division, denormals kept), so int8 requantize epilogues round exactly as on the CPU.
CUDA_IEEE_OPTIONS = ["--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false"]
INPUT_ALIGNMENT = 64  # bytes: TVM allocates, and its kernels assume, 64-byte aligned buffers
_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1023, 18  # Linux x86-64


def aligned_input(shape, dtype="float32") -> np.ndarray:
    """A zeroed C-order array whose data is 64-byte aligned: `Runner.run` reads it in place
    (numpy's own allocations are only 16-byte aligned, which costs `run` a copy)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + INPUT_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % INPUT_ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def set_threads(threads: int) -> int:
    """Fix TVM's runtime thread count (0 = all cores) before any kernel runs.

    Unset, TVM uses half the hardware threads (1 thread on a 2-core machine).
    """
    threads = int(threads) or (os.cpu_count() or 1)
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(0, threads)
    return threads


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@functools.cache
def enable_amx() -> bool:
    """Ask Linux to let this process use the AMX tile registers (`pipeline.amx` kernels): needed
    once before the first tile instruction, which otherwise dies with SIGILL. False where the
    kernel or CPU refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def check_host_supports(target_cfg: dict) -> None:
    """Refuse to run code built for CPU features this machine lacks (it would crash: SIGILL)."""
    flags = cpu_flags()
    missing = [f for f in target_cfg.get("requires") or [] if flags and f not in flags]
    if missing:
        raise TvmqError(f"target '{target_cfg['name']}' needs CPU features {missing} that this "
                        "machine lacks; rerun with a generic target: "
                        "`dvc exp run -S target=llvm`.")
    if "amx_tile" in (target_cfg.get("requires") or []) and not enable_amx():
        raise TvmqError(f"target '{target_cfg['name']}' uses AMX tiles, but Linux refused this "
                        "process their use (arch_prctl ARCH_REQ_XCOMP_PERM; needs kernel >= "
                        "5.16); rerun with `dvc exp run -S target=x86_avx512`.")


def nvrtc_compiler(arch: str) -> Callable[[str], bytes]:
    """CUDA source -> GPU code for `arch` with NVRTC (`cuda-bindings`) and `CUDA_IEEE_OPTIONS`.
    TVM's own compile callback reads the architecture from the current target, which TVM's
    runtime-only package cannot make, and compiles with fast math."""
    def compile_source(code: str) -> bytes:
        from tvm.support import nvcc

        return bytes(nvcc.compile_cuda(code, target_format="cubin", arch=arch,
                                       options=CUDA_IEEE_OPTIONS, compiler="nvrtc"))

    return compile_source


def register_cuda_compiler(compile_source: Callable[[str], bytes],
                           kernels: dict[str, Path] | None = None) -> None:
    """Make TVM compile CUDA kernels with `compile_source` wherever it compiles them: at build
    time where its CUDA runtime is loaded (a machine with a GPU), else when the GPU machine
    loads the library, which then holds CUDA source. There the build's own GPU code (`kernels`:
    source sha256 -> file, compiled by `compile.export`) is used instead."""
    import hashlib

    import tvm_ffi

    def callback(code: str) -> bytes:
        stored = (kernels or {}).get(hashlib.sha256(code.encode()).hexdigest())
        return stored.read_bytes() if stored is not None else compile_source(code)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", callback, override=True)


def _load_cuda_runtime(arch: str, kernels: dict[str, Path]) -> None:
    """Load TVM's CUDA runtime (a full `import tvm` loads `libtvm_runtime_cuda` where the NVIDIA
    driver is; TVM's runtime-only package, enough to run a build, does not) and register the
    compiler for the build's kernels."""
    import tvm
    import tvm_ffi

    if not tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True):
        from tvm_ffi.libinfo import load_lib_ctypes

        folder = Path(tvm.__file__).parent / "lib"
        try:
            load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda",
                            extra_lib_paths=[folder], mode="RTLD_LOCAL")
        except (OSError, RuntimeError) as err:
            raise TvmqError(f"TVM's CUDA runtime ({folder}/libtvm_runtime_cuda.so) did not "
                            f"load: {err}. It needs the NVIDIA driver (libcuda.so.1) and the "
                            "CUDA 13 runtime (libcudart.so.13) on the library path.") from err
    register_cuda_compiler(nvrtc_compiler(arch), kernels)


def device_name(target_cfg: dict) -> str:
    """The TVM runtime device a build for `target_cfg` runs on: 'cpu' or 'cuda'."""
    return "cuda" if target_cfg["kind"] in GPU_KINDS else "cpu"


def target_device(target_cfg: dict, kernels: dict[str, Path] | None = None):
    """The TVM device a build for `target_cfg` runs on, after checking this machine has it;
    for a GPU, with the build's compiled `kernels` registered (`register_cuda_compiler`)."""
    import tvm

    if device_name(target_cfg) == "cpu":
        check_host_supports(target_cfg)
        return tvm.cpu()
    name = target_cfg.get("name", target_cfg["kind"])
    try:
        _load_cuda_runtime(target_cfg["arch"], kernels or {})
        device = tvm.cuda(0)
        present = device.exist
    except TvmqError as err:
        present, why = False, str(err)
    else:
        why = "TVM sees no CUDA device"
    if not present:
        raise TvmqError(f"target '{name}' runs on an NVIDIA GPU and this machine has none usable "
                        f"({why}): run the build folder where one is (README \"GPU\"), or "
                        "rerun with a CPU target: `dvc exp run -S target=x86_avx512`.")
    have = "sm_" + device.compute_version.replace(".", "")
    if have != target_cfg["arch"]:
        raise TvmqError(f"target '{name}' was built for {target_cfg['arch']} but GPU 0 "
                        f"({device.device_name}) is {have}: rebuild with "
                        f"`dvc exp run -S target.arch={have}`.")
    return device


class Runner:
    """A built variant: `run(x)` returns logits; `time(x, ...)` uses TVM's time evaluator.

    Needs only TVM's runtime (`tvm.runtime`), not its compiler: a build runs on a machine
    that has just the runtime library, e.g. a GPU server (README "GPU")."""

    def __init__(self, folder: Path):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise TvmqError(f"{manifest_path} is missing: run the build stage (`dvc repro`).")
        self.manifest = json.loads(manifest_path.read_text())
        kernels = {k["sha256"]: folder / k["file"] for k in self.manifest.get("cuda_kernels", [])}
        for path in kernels.values():
            if not path.is_file():
                raise TvmqError(f"{path} (GPU code named in {manifest_path}) is missing: copy the "
                                "whole build folder, or rebuild (`dvc repro`).")
        self.device = target_device(self.manifest["target_config"], kernels)
        self.on_cpu = device_name(self.manifest["target_config"]) == "cpu"
        lib = tvm.runtime.load_module(str(folder / self.manifest["library"]))
        self.vm = VirtualMachine(lib, self.device)
        params = tvm.runtime.load_param_dict((folder / self.manifest["params_file"]).read_bytes())
        self.weights = [params[p["name"]] if self.on_cpu else params[p["name"]].copyto(self.device)
                        for p in self.manifest["params"]]
        self.input_spec = self.manifest["inputs"][0]
        self.entry = self.manifest["entry"]
        self._entry = self.vm[self.entry]
        # Where `run` copies an input it cannot read in place (see `_input_tensor`).
        self._staging = tvm.runtime.empty(self.input_spec["shape"], self.input_spec["dtype"],
                                          self.device)

    def _checked(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if list(x.shape) != self.input_spec["shape"]:
            raise TvmqError(f"input shape {list(x.shape)} != built shape {self.input_spec['shape']}")
        return x

    def _input_tensor(self, x: np.ndarray):
        """`x` as the entry's input: the caller's own memory where the kernels can read it (C
        order, the built dtype, 64-byte aligned as TVM's kernels assume of every buffer), else
        a copy in `_staging` (also for read-only arrays, which numpy will not export through
        DLPack). Reading in place saves ~0.3 ms per call on a cold cache: the copy of a
        224x224x3 float input writes 602 KB that the first kernel then reads."""
        import tvm_ffi

        x = self._checked(x)
        if (self.on_cpu and x.dtype == self.input_spec["dtype"] and x.flags.c_contiguous
                and x.flags.writeable and x.ctypes.data % INPUT_ALIGNMENT == 0):
            return tvm_ffi.from_dlpack(x, require_alignment=INPUT_ALIGNMENT,
                                       require_contiguous=True)
        self._staging.copyfrom(np.ascontiguousarray(x, dtype=self.input_spec["dtype"]))
        return self._staging

    def _args(self, x: np.ndarray) -> list:
        import tvm

        x = np.ascontiguousarray(self._checked(x), dtype=self.input_spec["dtype"])
        return [tvm.runtime.tensor(x, self.device)] + self.weights

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits for `x` (the built input shape; `aligned_input` gives a buffer read in place).

        The weights go with every call (~12 us for EfficientNet-Lite0's ~150 tensors): a VM
        closure with them bound would bind the input tensor too, which is what forced a copy."""
        out = self._entry(self._input_tensor(x), *self.weights)
        if not self.on_cpu:
            return out.numpy()
        return np.from_dlpack(out).copy()  # DLPack, not Tensor.numpy(): 1 us instead of 6 us

    def run_batch(self, xs: np.ndarray) -> np.ndarray:
        """Logits for each row of `xs` (the built model takes batch 1)."""
        return np.concatenate([self.run(x[None]) for x in xs])

    def time(self, x: np.ndarray, warmup: int, repeat: int, number: int) -> np.ndarray:
        """Seconds per call for each of `repeat` timed runs (after `warmup` untimed calls)."""
        args = self._args(x)
        for _ in range(warmup):
            self.vm[self.entry](*args)
        timer = self.vm.time_evaluator(self.entry, self.device, number=number, repeat=repeat)
        return np.asarray(timer(*args).results)
