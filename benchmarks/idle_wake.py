"""What a call costs when it starts on an idle process (as each call of compare_engines does).

    .venv/bin/python benchmarks/idle_wake.py [--threads 2] [--rounds 40]
        [--builds artifacts/build/fp32 artifacts/build/int8]

Times, right after `compare_engines.settle` (the process idle, TVM's worker parked) and right
after a warm-up call: a TVM kernel with one trivial parallel loop (what waking TVM's worker
costs a model's first parallel kernel), a 4.7 MB read (EfficientNet-Lite0 int8's weights) and
a pure-Python loop. The parallel kernel's difference is a fixed cost every engine's call pays
after idling, whatever the model; see benchmarks/README.md ("How it times").

With `--builds`, also each built model folder's call (`Runner.run`) back to back and right
after each thing that happens between two calls of one engine in `compare_engines`: 64 MB of
other memory traffic (another engine's turn, leaving the caches full of its data), 0.3 s of a
busy main thread (TVM's worker parks; the vCPU stays awake), 0.3 s asleep, and `settle`.
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

from pipeline.errors import cli_main  # noqa: E402


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


PAUSE_S = 0.3  # longer than TVM's worker spins (~150 ms) before it parks


def time_builds(runners: dict, rounds: int) -> None:
    """Median ms per call of each build (folder name -> `Runner`) after each kind of gap (see
    the module docstring)."""
    from kernel_times import random_input  # beside this script

    inputs = {folder: random_input(runner, 0) for folder, runner in runners.items()}
    other = np.ones(64 << 20, np.uint8)

    def busy():
        end = time.perf_counter() + PAUSE_S
        while time.perf_counter() < end:
            pass

    gaps = {"back to back": lambda: None, "64 MB traffic": lambda: np.add(other, 1, out=other),
            f"{PAUSE_S} s busy": busy, f"{PAUSE_S} s asleep": lambda: time.sleep(PAUSE_S),
            "settle": settle}
    samples = {(f, g): [] for f in runners for g in gaps}
    for folder, runner in runners.items():
        for _ in range(5):
            runner.run(inputs[folder])
    for _ in range(rounds):
        for gap_name, gap in gaps.items():
            for folder, runner in runners.items():
                x = inputs[folder]
                runner.run(x)  # the gap follows a call, as between one engine's calls
                gap()
                start = time.perf_counter()
                runner.run(x)
                samples[folder, gap_name].append((time.perf_counter() - start) * 1e3)
    print(f"median ms per call after each gap ({rounds} rounds):")
    print("  " + " | ".join(["build".ljust(24)] + [g.rjust(13) for g in gaps]))
    for folder in runners:
        print("  " + " | ".join([folder[-24:].ljust(24)] + [
            f"{np.median(samples[folder, g]):13.2f}" for g in gaps]))


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--builds", type=Path, nargs="*", default=[],
                        help="build folders (artifacts/build/<variant>) to time after each gap")
    args = parser.parse_args()
    from pipeline.runner import Runner, set_threads

    set_threads(args.threads)
    runners = {str(f): Runner(f) for f in args.builds}  # a bad folder fails before the probes
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
    if runners:
        time_builds(runners, args.rounds)


if __name__ == "__main__":
    main()
