"""What a call costs when it starts on an idle process (as each call of compare_engines does).

    .venv/bin/python benchmarks/idle_wake.py [--threads 2] [--rounds 40]

Times, right after `compare_engines.settle` (the process idle, TVM's worker parked) and right
after a warm-up call: a TVM kernel with one trivial parallel loop (what waking TVM's worker
costs a model's first parallel kernel), a 4.7 MB read (EfficientNet-Lite0 int8's weights) and
a pure-Python loop. The parallel kernel's difference is a fixed cost every engine's call pays
after idling, whatever the model; see benchmarks/README.md ("How it times").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402

from compare_engines import settle  # noqa: E402


def one_parallel_loop(threads: int):
    """A compiled kernel whose only work is one parallel loop of `threads` tiny tasks."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def kernel(a: T.Buffer((threads, 16), "float32")):
        for i in T.parallel(threads):
            for j in range(16):
                a[i, j] = a[i, j] + T.float32(1)

    lib = tvm.compile(kernel, target="llvm")
    data = tvm.runtime.tensor(np.zeros((threads, 16), np.float32))
    return lambda: lib(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    from pipeline.runner import set_threads

    set_threads(args.threads)
    weights = np.ones(4_700_000 // 4, np.float32)

    def python_loop():
        total = 0
        for i in range(20_000):
            total += i

    probes = {"TVM parallel loop": one_parallel_loop(args.threads),
              "read 4.7 MB": weights.sum, "Python loop": python_loop}
    samples = {name: {"idle": [], "warm": []} for name in probes}
    for _ in range(args.rounds):
        for name, probe in probes.items():
            for mode in ("idle", "warm"):
                if mode == "idle":
                    settle()
                else:
                    probe()
                start = time.perf_counter()
                probe()
                samples[name][mode].append((time.perf_counter() - start) * 1e6)
    print(f"{args.threads} threads, {args.rounds} rounds; median us after idling / after a warm call:")
    for name, s in samples.items():
        idle, warm = np.median(s["idle"]), np.median(s["warm"])
        print(f"  {name:18s} {idle:9.1f} / {warm:9.1f}  (+{idle - warm:.1f} us)")


if __name__ == "__main__":
    main()
