"""Per-layer speed of tvmq's conv kernels (`pipeline/packed_conv.py`): GMAC/s, not a test.

Builds one conv + bias + activation (the epilogue `tests/test_packed_conv.py` uses) per
ResNet50 layer shape and EfficientNet-Lite0 depthwise shape, with the default schedules for
`x86_avx512`, and prints multiply-adds per second, best of `--repeat` timed runs (each the mean
of 10 calls), batch 1:

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
    print(f"| layer (in, out, size, kernel, stride, pad, groups) | float32 GMAC/s | "
          "uint8 x int8 GMAC/s |")
    print("|---|---|---|")
    for layer in LAYERS:
        print(f"| {layer} | {gmacs(False, layer, args.repeat):.0f} | "
              f"{gmacs(True, layer, args.repeat):.0f} |", flush=True)


if __name__ == "__main__":
    main()
