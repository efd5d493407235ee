"""tvmq builds for a GPU, run where only TVM's runtime is installed, checked against the CPU builds.

    # here (tvmq installed, `dvc repro` done; a CUDA compiler, no GPU needed):
    .venv/bin/python benchmarks/gpu_runtime.py prepare OUT [--arch sm_90] [--crops 16] \
        [--cuda-graph true|false]
    # on the GPU machine (numpy and TVM's runtime library are enough; see benchmarks/README):
    python benchmarks/gpu_runtime.py run OUT [--repeat 300]

`prepare` builds the pipeline's fp32 (artifacts/relax) and int8 (artifacts/quantize) modules
for target `cuda` into OUT/build/<variant> and writes OUT/inputs.npz: the labelled photos and the
first `--crops` evaluation crops, their labels, and the logits for them of the CPU builds
(artifacts/build/<variant>, the pipeline's target), of TVM's unscheduled CPU build (generic
loops, which the int8 GPU build must match bit for bit: its sums are integer) and of Keras.
`run` loads each GPU build with `pipeline.runner.Runner`, compares its logits with those (top-1
agreement, max |difference|, bit-identity) and times batch 1 with TVM's time evaluator (which
waits for the GPU). It exits 1 when a GPU build's top-1 differs from its CPU build's on any input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

VARIANTS = {"fp32": "artifacts/relax", "int8": "artifacts/quantize"}


def prepare(out: Path, arch: str, n_crops: int, cuda_graph: bool | None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pipeline import data, params
    from pipeline.atomic import atomic_dir, atomic_path
    from pipeline.compile import export
    from pipeline.keras_io import keras_logits, load_keras
    from pipeline.relax_io import load_relax
    from pipeline.runner import Runner, set_threads

    from compare_engines import conf  # beside this script

    cfg = params.load()
    set_threads(cfg["runtime"]["threads"])
    target_cfg = {**conf("target", "cuda"), "arch": arch}
    if cuda_graph is not None:
        target_cfg["cuda_graph"] = cuda_graph
    modules = {variant: load_relax(ROOT / source) for variant, source in VARIANTS.items()}
    for variant, (mod, weights) in modules.items():
        start = time.perf_counter()
        with atomic_dir(out / "build" / variant) as folder:
            manifest = export(folder, mod, weights, target_cfg, variant)
        print(f"{variant}: built for {manifest['target']} in {time.perf_counter() - start:.1f} s",
              flush=True)
    names, x_lab, labels = data.labelled_inputs(cfg["model"])
    _, crops = data.crop_sets(cfg["dataset"])
    xs = np.concatenate([x_lab, data.crop_inputs(crops[:n_crops], cfg["model"])])
    reference = {f"cpu_{v}": Runner(ROOT / "artifacts/build" / v).run_batch(xs) for v in VARIANTS}
    for variant, (mod, weights) in modules.items():  # TVM's unscheduled loops (bit-exact int8)
        with tempfile.TemporaryDirectory() as tmp:
            export(tmp, mod, weights, {"name": "llvm", "kind": "llvm", "schedules": "none"},
                   variant)
            reference[f"cpu_unscheduled_{variant}"] = Runner(tmp).run_batch(xs)
    reference["keras"] = keras_logits(load_keras(ROOT / "artifacts/keras/model.keras"), xs)
    cpu_target = json.loads((ROOT / "artifacts/build/fp32/manifest.json").read_text())["target"]
    with atomic_path(out / "inputs.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, inputs=xs, labels=labels, names=np.array(names),
                            cpu_target=np.array(cpu_target), **reference)
    print(f"{out / 'inputs.npz'}: {len(xs)} inputs ({len(names)} labelled photos, {n_crops} crops),"
          f" logits of {', '.join(reference)}")


def run(out: Path, repeat: int) -> int:
    from pipeline.runner import Runner

    ref = np.load(out / "inputs.npz")
    xs, labels = ref["inputs"], ref["labels"]
    n_lab = len(labels)
    report, failed = {"cpu_target": str(ref["cpu_target"])}, False
    for variant in VARIANTS:
        start = time.perf_counter()
        runner = Runner(out / "build" / variant)  # with the build's stored GPU code (README "GPU")
        load_s = time.perf_counter() - start
        logits = runner.run_batch(xs)
        cpu = ref[f"cpu_{variant}"]
        agree = float(np.mean(logits.argmax(1) == cpu.argmax(1)))
        seconds = runner.time(xs[:1], warmup=20, repeat=repeat, number=1)
        ms = seconds * 1e3
        report[variant] = {
            "device": runner.device.device_name, "load_s": round(load_s, 2),
            "top1_agreement_with_cpu_build": agree,
            "max_abs_logit_diff_vs_cpu_build": float(np.abs(logits - cpu).max()),
            "bit_identical_to_cpu_build": bool(np.array_equal(logits, cpu)),
            "bit_identical_to_unscheduled_cpu": bool(
                np.array_equal(logits, ref[f"cpu_unscheduled_{variant}"])),
            "top1_agreement_with_keras": float(np.mean(logits.argmax(1) == ref["keras"].argmax(1))),
            "labelled_top1": float(np.mean(logits[:n_lab].argmax(1) == labels)),
            "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
        }
        failed |= agree < 1.0
        print(f"{variant}: {json.dumps(report[variant])}", flush=True)
    report["int8_speedup_vs_fp32"] = report["fp32"]["median_ms"] / report["int8"]["median_ms"]
    print(json.dumps(report, indent=1))
    return int(failed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--crops", type=int, default=16)
    p.add_argument("--cuda-graph", choices=["true", "false"], default=None,
                   help="override conf/target/cuda.yaml's cuda_graph")
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    r.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    if args.command == "prepare":
        args.out.mkdir(parents=True, exist_ok=True)
        graph = None if args.cuda_graph is None else args.cuda_graph == "true"
        prepare(args.out, args.arch, args.crops, graph)
    else:
        sys.exit(run(args.out, args.repeat))


if __name__ == "__main__":
    main()
