"""Load an exported build folder with plain TVM runtime APIs and run or time it."""
from __future__ import annotations

import ctypes
import functools
import json
import os
from pathlib import Path

import numpy as np

from .errors import TvmqError

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


class Runner:
    """A built variant: `run(x)` returns logits; `time(x, ...)` uses TVM's time evaluator."""

    def __init__(self, folder: Path):
        import tvm
        from tvm import relax

        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise TvmqError(f"{manifest_path} is missing: run the build stage (`dvc repro`).")
        self.manifest = json.loads(manifest_path.read_text())
        check_host_supports(self.manifest["target_config"])
        self.device = tvm.cpu()
        lib = tvm.runtime.load_module(str(folder / self.manifest["library"]))
        self.vm = relax.VirtualMachine(lib, self.device)
        params = tvm.runtime.load_param_dict((folder / self.manifest["params_file"]).read_bytes())
        self.weights = [params[p["name"]] for p in self.manifest["params"]]
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
        if (x.dtype == self.input_spec["dtype"] and x.flags.c_contiguous and x.flags.writeable
                and x.ctypes.data % INPUT_ALIGNMENT == 0):
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
