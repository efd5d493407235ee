"""Per-kernel times of built models, for kernel work (a script, not a test).

    .venv/bin/python benchmarks/kernel_times.py artifacts/build/int8 [--threads 1 2]
    .venv/bin/python benchmarks/kernel_times.py BUILD_A BUILD_B [--threads 2]    # A/B

Each kernel's time per model call is the sum of its calls in that model call (a kernel the
model calls three times counts three times); over `--calls` instrumented model calls (the VM's
instrument hook, called before and after each kernel) the shortest of those sums is kept: the
kernel at its best, free of the machine's noise, though not of the hook's own cost (~0.5 us
per kernel call: a trivial kernel measures 0.64 us, 0.14 us without the hook).

One build: those minimums at each thread count, side by side, and for the last count the
"parallel excess" over a perfect split of the first count's time (launching and joining the
pool's tasks, their imbalance, and data moving between the cores' caches; with more L2 in
use, a kernel can also split better than perfectly, a negative excess).

Two builds of one model (e.g. main's and a schedule change's, both `compile.export`ed): first
whether their logits are bit-identical on random inputs (the kernels' arithmetic must not
change), then whole-call medians of interleaved calls and the per-kernel minimums side by side.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import numpy as np  # noqa: E402

from compare_engines import interleaved  # noqa: E402

from pipeline.errors import TvmqError, cli_main  # noqa: E402

NAME_WIDTH = 60
WARMUP = 10  # untimed calls (rounds) first: a fresh process's first calls page in code


def random_input(runner, seed: int) -> np.ndarray:
    """An input of the build's shape and dtype (64-byte aligned, read in place)."""
    from pipeline.runner import aligned_input

    spec = runner.input_spec
    x = aligned_input(spec["shape"], spec["dtype"])
    rng = np.random.default_rng(seed)
    if np.dtype(spec["dtype"]).kind == "f":
        x[...] = rng.uniform(-1, 1, x.shape)
    else:
        info = np.iinfo(spec["dtype"])
        x[...] = rng.integers(info.min, info.max, x.shape, endpoint=True)
    return x


def kernel_minimums(runner, x: np.ndarray, calls: int) -> tuple[dict[str, float], Counter]:
    """({kernel: shortest us per model call}, {kernel: its calls per model call}) over
    `calls` model calls. `vm.builtin.*` entries (allocations, reshapes) are left out."""
    start: dict[str, float] = {}
    spent: dict[str, float] = defaultdict(float)
    count: Counter = Counter()

    def hook(func, name, before, ret, *args):
        if before:
            start[name] = time.perf_counter()
        else:
            spent[name] += time.perf_counter() - start[name]
            count[name] += 1
        return 0

    for _ in range(WARMUP):
        runner.run(x)
    best: dict[str, float] = {}
    runner.vm.set_instrument(hook)
    try:
        for _ in range(calls):
            spent.clear()
            count.clear()
            runner.run(x)
            for name, seconds in spent.items():
                best[name] = min(best.get(name, np.inf), seconds * 1e6)
    finally:
        runner.vm.set_instrument(None)
    per_call = Counter({n: c for n, c in count.items() if not n.startswith("vm.builtin")})
    return {n: v for n, v in best.items() if n in per_call}, per_call


def whole_call_medians(runners: list, x: np.ndarray, calls: int) -> list[float]:
    """Median ms per call of each runner on `x`, the runners' calls interleaved
    (`compare_engines.interleaved`: each round's first runner rotates) so that the machine's
    slow stretches hit each alike."""
    engines = {str(i): runner.run for i, runner in enumerate(runners)}
    samples = interleaved(engines, x, WARMUP, calls, wait=False)
    return [float(np.median(samples[name])) for name in engines]


def _row(name: str, calls, *cells) -> str:
    return f"| {name[:NAME_WIDTH]:{NAME_WIDTH}} | {calls:>5} | " + " | ".join(cells) + " |"


def _time_in_process(folder: Path, threads: int, calls: int):
    """(whole-call median ms, kernel minimums, calls per model call) with `threads` threads,
    in this (fresh) process: TVM's pool takes its thread count once per process."""
    from pipeline.runner import Runner, set_threads

    set_threads(threads)
    runner = Runner(folder)
    x = random_input(runner, 0)
    median = whole_call_medians([runner], x, calls)[0]
    return (median, *kernel_minimums(runner, x, calls))


def one_build(folder: Path, threads: list[int], calls: int, top: int) -> None:
    from pipeline.runner import Runner

    Runner(folder)  # a bad folder fails here, with the Runner's message
    table, counts = {}, None
    for n in threads:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            median, table[n], counts = pool.submit(_time_in_process, folder, n, calls).result()
        print(f"{folder}, {n} thread(s): whole call median {median:.3f} ms, "
              f"kernel minimums sum to {sum(table[n].values()) / 1e3:.3f} ms")
    first, last = threads[0], threads[-1]
    heads = [f"{n} thr us" for n in threads]
    if len(threads) > 1:
        heads += [f"{first}->{last} speedup", "excess us"]
    print(_row("kernel", "calls", *heads))
    print(_row("-" * NAME_WIDTH, "---", *["---"] * len(heads)))
    names = sorted(table[last], key=lambda n: -table[last][n])
    for name in names[:top] + ["total"]:
        values = ([sum(t.values()) for t in table.values()] if name == "total"
                  else [table[n].get(name, np.nan) for n in threads])
        cells = [f"{v:8.1f}" for v in values]
        if len(threads) > 1:
            ideal = values[0] * first / last
            cells += [f"{values[0] / values[-1]:6.2f}x", f"{values[-1] - ideal:7.1f}"]
        print(_row(name, "" if name == "total" else counts[name], *cells))
    if len(names) > top:
        print(f"({len(names) - top} more kernels in the total; --top to list them)")


def two_builds(folders: list[Path], threads: int, calls: int, top: int) -> None:
    from pipeline.runner import Runner, set_threads

    set_threads(threads)
    a, b = (Runner(f) for f in folders)
    specs = [(r.input_spec["shape"], r.input_spec["dtype"]) for r in (a, b)]
    if specs[0] != specs[1]:
        raise TvmqError(f"{folders[0]} takes {specs[0]} but {folders[1]} takes {specs[1]} "
                        "(shape, dtype): compare two builds of one model.")
    identical = all(np.array_equal(a.run(x), b.run(x))
                    for x in (random_input(a, seed) for seed in range(1, 5)))
    print(f"logits bit-identical on 4 random inputs: {'yes' if identical else 'NO'}")
    x = random_input(a, 0)
    ma, mb = whole_call_medians([a, b], x, calls * 5)
    print(f"whole call median ({threads} threads, {calls * 5} interleaved calls each): "
          f"A {ma:.3f} ms, B {mb:.3f} ms, A/B {ma / mb:.3f}x (>1: B faster)")
    ta, counts = kernel_minimums(a, x, calls)
    tb, counts_b = kernel_minimums(b, x, calls)
    counts.update({n: c for n, c in counts_b.items() if n not in counts})
    print(_row("kernel", "calls", "A us", "B us", "A/B"))
    print(_row("-" * NAME_WIDTH, "---", "---", "---", "---"))
    names = sorted(set(ta) | set(tb), key=lambda n: -max(ta.get(n, 0), tb.get(n, 0)))
    for name in names[:top]:
        va, vb = ta.get(name, np.nan), tb.get(name, np.nan)
        print(_row(name, counts[name], f"{va:8.1f}", f"{vb:8.1f}", f"{va / vb:6.3f}x"))
    sa, sb = sum(ta.values()), sum(tb.values())
    print(_row("total", "", f"{sa:8.1f}", f"{sb:8.1f}", f"{sa / sb:6.3f}x"))
    if set(ta) != set(tb):
        print("(the builds' kernels differ: a kernel only one build has shows nan for the other)")


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", type=Path, nargs="+",
                        help="one build folder (artifacts/build/<variant>), or two to compare")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts (one build; default 1 2) or the count (two builds; "
                             "default 2)")
    parser.add_argument("--calls", type=int, default=40,
                        help="instrumented calls per build, and timed whole calls (5x as many "
                             "for two builds)")
    parser.add_argument("--top", type=int, default=25, help="kernels to list")
    args = parser.parse_args()
    if len(args.builds) > 2:
        raise TvmqError("give one build folder, or two to compare")
    if args.calls < 1 or args.top < 1 or any(n < 1 for n in args.threads or [1]):
        raise TvmqError("--calls, --top and --threads must be positive")
    if len(args.builds) == 1:
        one_build(args.builds[0], args.threads or [1, 2], args.calls, args.top)
    else:
        if args.threads and len(args.threads) > 1:
            raise TvmqError("comparing two builds takes one --threads count")
        two_builds(args.builds, (args.threads or [2])[0], args.calls, args.top)


if __name__ == "__main__":
    main()
