"""Latency of tvmq fp32/int8 against Keras (tf.function) and ONNX Runtime fp32/int8, one process.

    .venv/bin/python benchmarks/compare_engines.py [--models efficientnet_lite0 resnet50]
        [--threads 2] [--rounds 100] [--warmup 10] [--calibration 64] [--no-settle]
        [--target x86_avx512 | sapphirerapids (AMX) | llvm] [--json out.json]

Batch 1, a fixed thread count for every engine, engines interleaved: each round runs every
engine (the starting engine rotates per round), so all engines see the same machine load. Each
engine's turn is two timed calls: the first once the process is idle ("idle start": its worker
threads parked, as for a request after a pause), the second right after it ("warm", as in a
stream of requests). See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pipeline.errors import cli_main  # noqa: E402

PHOTO = "skimage_chelsea"
ENGINE_ORDER = ["tvmq fp32", "tvmq int8", "tvmq int8 all", "keras tf.function", "ort fp32",
                "ort int8"]
MODELS = {"efficientnet_lite0": {}, "resnet50": {"weights": None}}  # overrides of conf/model/*.yaml
CALLS = ("idle_start", "warm")  # each engine's two calls per round: after `settle`, then again
RATIOS = [  # (label, faster candidate A, baseline B): ratio = median(B) / median(A), > 1: A faster
    ("int8 speedup vs fp32 (tvmq)", "tvmq int8", "tvmq fp32"),
    ("tvmq int8 vs ORT int8", "tvmq int8", "ort int8"),
    ("tvmq int8 all vs ORT int8", "tvmq int8 all", "ort int8"),
    ("tvmq fp32 vs Keras tf.function", "tvmq fp32", "keras tf.function"),
    ("ORT int8 vs ORT fp32", "ort int8", "ort fp32"),
]


def conf(group: str, name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / group / f"{name}.yaml").read_text())


def tvm_engines(keras_model, calibration: np.ndarray, tmp: Path, all_layers: bool,
                target_name: str) -> dict:
    """tvmq fp32 and int8 builds for `conf/target/<target_name>.yaml`, loaded with
    pipeline.runner.Runner; with `all_layers` also int8 with the first conv quantized too (as
    ORT's int8 model has it)."""
    from pipeline.compile import export
    from pipeline.quantize import QConfig, quantize_with_report
    from pipeline.relax_import import keras_to_relax
    from pipeline.runner import Runner

    target = conf("target", target_name)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras's "Saved artifact at ..." listing
        mod, weights = keras_to_relax(keras_model)
    print(f"  quantizing with tvmq ({len(calibration)} calibration crops) ...", flush=True)
    qmod, qweights, _, _ = quantize_with_report(mod, weights, calibration, QConfig())
    builds = {"fp32": (mod, weights), "int8": (qmod, qweights)}
    if all_layers:
        amod, aweights, _, _ = quantize_with_report(mod, weights, calibration,
                                                    QConfig(skip_conv_layers=()))
        builds["int8 all"] = (amod, aweights)
    runners = {}
    for variant, (m, w) in builds.items():
        print(f"  building tvmq {variant} for {target['name']} ...", flush=True)
        folder = tmp / variant.replace(" ", "_")
        folder.mkdir()
        export(folder, m, w, target, variant.split()[0])
        runners[f"tvmq {variant}"] = Runner(folder).run
    return runners


def ort_engines(keras_model, calibration: np.ndarray, tmp: Path, threads: int) -> dict:
    """ONNX Runtime fp32 and static int8 (QDQ, per-channel, U8S8, MinMax on the same crops)."""
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx
    from onnxruntime import quantization as q

    spec = [tf.TensorSpec((1, *keras_model.inputs[0].shape[1:]), tf.float32, name="input")]
    proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec,
                                          output_path=str(tmp / "fp32.onnx"))
    input_name = proto.graph.input[0].name
    q.quant_pre_process(str(tmp / "fp32.onnx"), str(tmp / "prep.onnx"), skip_symbolic_shape=True)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: x[None]} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    print(f"  quantizing with ORT ({len(calibration)} calibration crops) ...", flush=True)
    q.quantize_static(str(tmp / "prep.onnx"), str(tmp / "int8.onnx"), Reader(),
                      quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    engines = {}
    for variant in ("fp32", "int8"):
        session = ort.InferenceSession(str(tmp / f"{variant}.onnx"), options,
                                       providers=["CPUExecutionProvider"])
        engines[f"ort {variant}"] = lambda x, s=session: s.run(None, {input_name: x})[0]
    return engines


def settle(poll_s: float = 0.01, limit_s: float = 1.0) -> None:
    """Sleep until this process has been idle for `poll_s` (at most `limit_s`).

    Engines leave worker threads spin-waiting after a call (TVM's pool yields in a loop for
    ~150 ms, ORT's spins ~40 ms), which would slow down whichever engine runs next.
    """
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        cpu = time.process_time()
        time.sleep(poll_s)
        if time.process_time() - cpu < 0.1 * poll_s:
            return


def interleaved(engines: dict, x: np.ndarray, warmup: int, rounds: int, wait: bool = True,
                calls: int = 1) -> dict[str, np.ndarray]:
    """Milliseconds per call of each engine, shape (rounds, calls): in round r every engine,
    starting at engine r, makes `calls` calls in a row.

    With `wait`, an engine's first call in a round starts on an idle process (`settle`,
    untimed), its later calls right after its own previous one.
    """
    names = list(engines)
    samples = {n: [] for n in names}
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if wait:
                settle()
            row = []
            for _ in range(calls):
                start = time.perf_counter()
                engines[name](x)
                row.append((time.perf_counter() - start) * 1e3)
            if r >= warmup:
                samples[name].append(row)
    return {n: np.array(v) for n, v in samples.items()}


def bench_model(name: str, args, have_ort: bool) -> dict:
    import keras
    import tensorflow as tf

    from pipeline import data
    from pipeline.models.registry import build_keras_model
    from pipeline.runner import aligned_input

    model_cfg = {**conf("model", name), **MODELS[name]}
    weights_note = "RANDOM weights (weights: null): top-1 is meaningless" \
        if model_cfg.get("weights") is None else f"real weights ({model_cfg['weights']})"
    print(f"\n== {name}: {weights_note} ==", flush=True)
    keras.utils.set_random_seed(0)  # the same random ResNet50 weights on every run
    keras_model = build_keras_model(model_cfg)
    photo = data.photo_input(PHOTO, model_cfg)
    x = aligned_input(photo.shape)  # every engine's input: 64-byte aligned, so tvmq reads it
    x[...] = photo  # in place (numpy's own arrays are 16-byte aligned and cost tvmq a copy)
    calibration_crops, _ = data.crop_sets(conf("dataset", "photos"))
    calibration = data.crop_inputs(calibration_crops[:args.calibration], model_cfg)
    fn, tx = tf.function(keras_model), tf.constant(x)
    engines = {"keras tf.function": lambda _x: fn(tx).numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        engines.update(tvm_engines(keras_model, calibration, tmp, args.int8_all_layers,
                                   args.target))
        if have_ort:
            engines.update(ort_engines(keras_model, calibration, tmp, args.threads))
        engines = {n: engines[n] for n in ENGINE_ORDER if n in engines}
        names = data.class_names()
        logits = {n: np.asarray(e(x)).reshape(-1) for n, e in engines.items()}
        print(f"  timing {len(engines)} engines: {args.warmup} warm-up + {args.rounds} rounds, "
              f"batch 1, {args.threads} threads ...", flush=True)
        load = [os.getloadavg()[0]]
        ms = interleaved(engines, x, args.warmup, args.rounds, not args.no_settle, calls=2)
        load.append(os.getloadavg()[0])
        print("  timing each engine alone, back to back ...", flush=True)
        hot = {n: interleaved({n: e}, x, args.warmup, args.rounds, False)[n][:, 0]
               for n, e in engines.items()}
    result = {"weights": model_cfg.get("weights"), "loadavg_1min": load,
              "settle": not args.no_settle, "engines": {}}
    for n, v in ms.items():
        result["engines"][n] = {
            **{f"{kind}_{stat}": float(f(v[:, i])) for i, kind in enumerate(CALLS)
               for stat, f in (("median_ms", np.median), ("p90_ms", percentile_90))},
            "back_to_back_median_ms": float(np.median(hot[n])), **top1(logits[n], names),
            **{f"{kind}_samples_ms": [round(float(s), 4) for s in v[:, i]]
               for i, kind in enumerate(CALLS)}}
    med = {kind: {n: r[f"{kind}_median_ms"] for n, r in result["engines"].items()}
           for kind in CALLS}
    result["ratios"] = {kind: {label: med[kind][b] / med[kind][a] for label, a, b in RATIOS
                               if a in med[kind] and b in med[kind]} for kind in CALLS}
    print_table(name, weights_note, result)
    return result


def percentile_90(v: np.ndarray) -> float:
    return np.percentile(v, 90)


def top1(logits: np.ndarray, names: list[str]) -> dict:
    first, second = np.argsort(-logits)[:2]
    return {"top1": int(first), "top1_name": names[first],
            "top1_margin": float(logits[first] - logits[second])}  # logit gap to the runner-up


def print_table(name: str, weights_note: str, result: dict) -> None:
    print(f"\n{name} ({weights_note}), photo {PHOTO}; 1-min load average "
          f"{result['loadavg_1min'][0]:.2f} -> {result['loadavg_1min'][1]:.2f} during the rounds"
          + ("" if result["settle"] else "; --no-settle: the idle-start calls did not start idle"))
    print(f"| {'engine':<18} | idle-start median / p90 ms | warm median / p90 ms | "
          "back-to-back median ms | top-1 (logit margin to 2nd) |")
    print(f"|{'-' * 20}|----------------------------|----------------------|"
          f"------------------------|{'-' * 29}|")
    for n, r in result["engines"].items():
        print(f"| {n:<18} | {r['idle_start_median_ms']:17.2f} / {r['idle_start_p90_ms']:6.2f} | "
              f"{r['warm_median_ms']:11.2f} / {r['warm_p90_ms']:6.2f} | "
              f"{r['back_to_back_median_ms']:22.2f} | "
              f"{r['top1']} {r['top1_name']} (+{r['top1_margin']:.3f}) |")
    print("  ratios of medians, idle start / warm (median B / median A; >1: A faster):")
    for label, a, b in RATIOS:
        if label in result["ratios"]["warm"]:
            print(f"  {label:<32} {result['ratios']['idle_start'][label]:5.2f}x / "
                  f"{result['ratios']['warm'][label]:5.2f}x  (A = {a}, B = {b})")
    agree = len({r["top1"] for r in result["engines"].values()}) == 1
    print("  top-1 agrees across all engines" if agree else "  top-1 DIFFERS between engines "
          "(a small fp32 margin means a near-tie that int8 rounding can flip)")


def versions() -> dict[str, str]:
    found = {}
    for dist in ("apache-tvm", "tensorflow-cpu", "keras", "onnxruntime", "onnx", "tf2onnx"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


@cli_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--no-settle", action="store_true",
                        help="run calls back to back, without waiting for the previous "
                             "engine's spinning threads to park (they then slow the next one)")
    parser.add_argument("--calibration", type=int, default=64, help="calibration crops (<= 200)")
    parser.add_argument("--int8-all-layers", action="store_true",
                        help="also time tvmq int8 with the first conv in int8 too "
                             "(quantize.skip_conv_layers=[]), as ORT's int8 model has it")
    parser.add_argument("--target", default="x86_avx512",
                        choices=sorted(p.stem for p in (ROOT / "conf" / "target").glob("*.yaml")),
                        help="tvmq's build target (sapphirerapids: int8 convs on AMX tiles)")
    parser.add_argument("--json", type=Path, help="save settings and numbers here")
    args = parser.parse_args()
    if not 1 <= args.calibration <= 200:
        parser.error("--calibration must be 1..200 (the dataset's calibration crops)")
    from pipeline.errors import TvmqError
    from pipeline.runner import check_host_supports

    try:  # before minutes of building: code for missing CPU features would die with SIGILL
        check_host_supports(conf("target", args.target))
    except TvmqError as err:
        parser.error(f"{err} Here: --target x86_avx512 or llvm.")

    import tensorflow as tf  # thread pools are fixed before TF runs any op

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from pipeline.runner import set_threads

    set_threads(args.threads)
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx
        tf2onnx.logging.set_level(logging.ERROR)
        have_ort = True
    except ImportError as err:
        have_ort = False
        print(f"ONNX Runtime engines skipped ({err}): install them with "
              "`.venv/bin/pip install -r benchmarks/requirements.txt`.")
    start = time.perf_counter()
    results = {m: bench_model(m, args, have_ort) for m in args.models}
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "cpu_count": os.cpu_count(),
                                         "versions": versions(), "photo": PHOTO,
                                         "models": results}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
