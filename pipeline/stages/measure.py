"""Stage 7: latency, throughput, peak memory and file sizes of every variant and of Keras.

    python -m pipeline.stages.measure fp32 [int8 ...]

Writes metrics/measure.json (numeric, for `dvc metrics diff`) and plot data
artifacts/measure/{latency.csv, sizes.csv}.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from .. import data, params
from ..atomic import atomic_dir, write_json
from ..errors import TvmqError, cli_main
from ..latency import measure

OUT = "artifacts/measure"
METRICS = "metrics/measure.json"


def file_sizes(variants: list[str]) -> dict:
    sizes = {"keras_model_bytes": os.path.getsize("artifacts/keras/model.keras"),
             "keras_weight_bytes": json.loads(Path("artifacts/keras/card.json").read_text())["weight_bytes"]}
    for variant in variants:
        folder = Path("artifacts/build") / variant
        sizes[f"{variant}_params_bytes"] = (folder / "model.params").stat().st_size
        sizes[f"{variant}_library_bytes"] = (folder / "model.so").stat().st_size
    return sizes


@cli_main
def main(argv: list[str] | None = None) -> None:
    variants = sys.argv[1:] if argv is None else argv
    if not variants:
        raise TvmqError("usage: python -m pipeline.stages.measure VARIANT [VARIANT ...]")
    cfg = params.load()
    m = cfg["measure"]
    threads = int(cfg["runtime"]["threads"]) or (os.cpu_count() or 1)
    x = data.photo_input("skimage_chelsea", cfg["model"])
    engines = [(v, "tvm", f"artifacts/build/{v}") for v in variants]
    if m["keras_reference"]:
        engines.append(("keras", "keras", "artifacts/keras/model.keras"))
    results = {}
    for name, engine, path in engines:
        print(f"timing {name} ({m['repeat']} x {m['number']} runs, {threads} threads) ...", flush=True)
        results[name] = measure(engine, path, x, m["warmup"], m["repeat"], m["number"], threads)
        print(f"  median {results[name]['latency_ms_median']:.2f} ms, "
              f"p90 {results[name]['latency_ms_p90']:.2f} ms", flush=True)
    target = json.loads(Path(f"artifacts/build/{variants[0]}/manifest.json").read_text())["target"]
    metrics = {"threads": threads, "sizes": file_sizes(variants)}
    for name, r in results.items():
        metrics[name] = {k: round(v, 4) for k, v in r.items() if k != "samples_ms"}
    if "keras" in results:
        for name in variants:
            metrics[name]["speedup_vs_keras"] = round(
                results["keras"]["latency_ms_median"] / results[name]["latency_ms_median"], 4)
    with atomic_dir(OUT) as out:
        with open(out / "latency.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["engine", "run", "latency_ms"])
            for name, r in results.items():
                writer.writerows([name, i, v] for i, v in enumerate(r["samples_ms"]))
        with open(out / "sizes.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "megabytes"])
            writer.writerows([k.removesuffix("_bytes"), round(v / 1e6, 4)]
                             for k, v in metrics["sizes"].items())
        write_json(out / "run.json", {"target": target, "threads": threads})
    write_json(METRICS, metrics)


if __name__ == "__main__":
    main()
