"""Per-layer speed of tvmq's conv kernels (`pipeline/packed_conv.py`): GMAC/s, not a test.

Builds one conv + bias + activation (the epilogue `tests/test_packed_conv.py` uses) per
ResNet50 layer shape and EfficientNet-Lite0 depthwise shape, with the default schedules for
`x86_avx512`, and prints multiply-adds per second, best of `--repeat` timed runs (each the mean
of 10 calls), batch 1. Each figure also as a share of this CPU's peak, measured first in the
same process with the same threads: a loop of independent float32 FMAs (16 lanes) and of
independent `vpdpbusd` (16 lanes x 4 uint8 x int8 products), built by TVM for the same target:

    .venv/bin/python benchmarks/conv_layers.py [--threads 2] [--repeat 10]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# (in channels, out channels, size, kernel, stride, padding, groups): ResNet50's conv shapes,
# then EfficientNet-Lite0's depthwise ones (groups = channels)
LAYERS = [(64, 64, 56, 3, 1, 1, 1), (128, 128, 28, 3, 1, 1, 1), (256, 256, 14, 3, 1, 1, 1),
          (512, 512, 7, 3, 1, 1, 1), (256, 64, 56, 1, 1, 0, 1), (64, 256, 56, 1, 1, 0, 1),
          (512, 128, 28, 1, 1, 0, 1), (1024, 256, 14, 1, 1, 0, 1), (512, 2048, 7, 1, 1, 0, 1),
          (512, 1024, 28, 1, 2, 0, 1), (3, 64, 224, 7, 2, 3, 1),
          (96, 96, 112, 3, 2, 1, 96), (144, 144, 56, 3, 1, 1, 144), (144, 144, 56, 5, 2, 2, 144),
          (672, 672, 14, 5, 1, 2, 672), (1152, 1152, 7, 5, 1, 2, 1152)]


PEAK_STEPS = 1 << 20  # per thread
PEAK_CHAINS = 8  # independent accumulators: more than latency x throughput on current x86


def peak_gmacs(int8: bool, threads: int, repeat: int) -> float:
    """Multiply-adds per second of a loop of nothing but independent 16-lane FMAs (float32) or
    `vpdpbusd` (uint8 x int8, 4 products per lane), one accumulator set per thread."""
    import numpy as np
    import tvm
    from tvm.script import tirx as T

    from test_packed_conv import X86

    lanes, dtype = (64, "int32") if int8 else (16, "float32")

    def step(acc, a, b):
        if int8:
            return T.call_llvm_pure_intrin(
                "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc,
                T.reinterpret("int8x64", a[T.ramp(0, 1, 64)]),
                T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", b[T.ramp(0, 1, 4)]), 16)))
        return T.call_llvm_pure_intrin("float32x16", "llvm.fma.v16f32", a[T.ramp(0, 1, 16)],
                                       T.broadcast(b[0], 16), acc)

    a_type, b_type = ("uint8", "int8") if int8 else ("float32", "float32")

    @T.prim_func
    def main(out: T.Buffer((threads, 16), dtype), a: T.Buffer((lanes,), a_type),
             b: T.Buffer((4,), b_type)):
        for t in T.parallel(threads):
            acc = T.decl_buffer((PEAK_CHAINS * 16,), dtype, scope="global")
            for j in range(PEAK_CHAINS * 16):
                acc[j] = T.Cast(dtype, 0)
            for _ in range(PEAK_STEPS):
                for j in T.unroll(PEAK_CHAINS):
                    acc[T.ramp(j * 16, 1, 16)] = step(acc[T.ramp(j * 16, 1, 16)], a, b)
            for k in range(16):  # every chain feeds the output, so none is dead code
                out[t, k] = T.Cast(dtype, 0)
                for j in range(PEAK_CHAINS):
                    out[t, k] = out[t, k] + acc[j * 16 + k]

    lib = tvm.compile(main, target=X86).mod
    args = [tvm.runtime.tensor(np.zeros((threads, 16), dtype)),
            tvm.runtime.tensor(np.ones(lanes, a_type)), tvm.runtime.tensor(np.ones(4, b_type))]
    seconds = min(lib.time_evaluator("main", tvm.cpu(), number=1, repeat=repeat)(*args).results)
    return threads * PEAK_STEPS * PEAK_CHAINS * lanes / seconds / 1e9


def gmacs(int8: bool, layer, repeat: int) -> float:
    import tvm
    from tvm import relax

    from pipeline.compile import build, specialize
    from pipeline.relax_io import weight_params
    from test_packed_conv import X86, conv_model

    c, o, size, k, stride, pad, groups = layer
    mod, x, weights = conv_model(int8, c, o, size, k, stride, pad, groups)
    mod, weights = specialize(mod, weights, X86, "default")
    vm = relax.VirtualMachine(build(mod, X86, "default"), tvm.cpu())
    args = [tvm.runtime.tensor(x)] + [tvm.runtime.tensor(weights[p.name]) for p in weight_params(mod)]
    seconds = min(vm.time_evaluator("main", tvm.cpu(), number=10, repeat=repeat)(*args).results)
    out = (size + 2 * pad - k) // stride + 1
    return o * (c // groups) * k * k * out * out / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    from pipeline.runner import set_threads

    set_threads(args.threads)
    peak = {int8: peak_gmacs(int8, args.threads, args.repeat) for int8 in (False, True)}
    print(f"Peak, {args.threads} threads: float32 FMA {peak[False]:.0f} GMAC/s, "
          f"uint8 x int8 vpdpbusd {peak[True]:.0f} GMAC/s\n")
    print(f"| layer (in, out, size, kernel, stride, pad, groups) | float32 GMAC/s | "
          "uint8 x int8 GMAC/s |")
    print("|---|---|---|")
    for layer in LAYERS:
        cells = []
        for int8 in (False, True):
            rate = gmacs(int8, layer, args.repeat)
            cells.append(f"{rate:.0f} ({rate / peak[int8]:.0%})")
        print(f"| {layer} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
