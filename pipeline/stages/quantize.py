"""Stage 3: post-training int8 quantization of the Relax module (our own Relax pass).

Writes artifacts/quantize/{model.py, model.params, report.json, report.csv}. Calibration
statistics are cached in ~/.cache/tvmq/calibration (or $TVMQ_CACHE/calibration; joblib), keyed
by the fp32 module's bytes and the calibration set, so changing only the calibrate mode does not
rerun the fp32 model, also across `dvc exp` workspaces.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from pathlib import Path

import joblib
import numpy as np

from .. import data, params
from ..atomic import atomic_dir, write_json
from ..errors import cli_main
from ..quantize import QConfig, quantize_with_report
from ..quantize.calibrate import FORMAT_VERSION, collect
from ..relax_io import PARAMS_FILE, SCRIPT_FILE, load_relax, save_relax
from ..runner import set_threads

SOURCE = "artifacts/relax"
OUT = "artifacts/quantize"
CACHE = Path(os.environ.get("TVMQ_CACHE", Path.home() / ".cache" / "tvmq")) / "calibration"


def _calibrate(digest: str, dataset_cfg: dict, model_cfg: dict, mod, weights, inputs,
               version: int = FORMAT_VERSION):
    """Collect calibration statistics, cached by joblib under (digest of the fp32 module,
    dataset and model config, format version); the module and inputs themselves are not hashed."""
    return collect(mod, weights, inputs)


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for name in (SCRIPT_FILE, PARAMS_FILE):
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def _round(value):
    return round(value, 8) if isinstance(value, float) else value


@cli_main
def main() -> None:
    cfg = params.load()
    qcfg = QConfig.from_params(cfg["quantize"])
    set_threads(cfg["runtime"]["threads"])
    mod, weights = load_relax(SOURCE)
    calibration, _ = data.crop_sets(cfg["dataset"])
    x_cal = data.crop_inputs(calibration, cfg["model"])
    cached = joblib.Memory(CACHE, verbose=0).cache(_calibrate, ignore=["mod", "weights", "inputs"])
    stats = cached(_digest(SOURCE), cfg["dataset"], cfg["model"], mod, weights, x_cal)
    print(f"quantizing ({qcfg.calibrate_mode}) ...", flush=True)
    qmod, qweights, records, summary = quantize_with_report(mod, weights, x_cal, qcfg, stats)
    rows = [{k: _round(v) for k, v in dataclasses.asdict(r).items() if k != "extra"}
            | {"requantize": r.extra.get("requantize", "")} for r in records]
    fp32_bytes = sum(w.nbytes for w in weights.values())
    int8_bytes = sum(w.nbytes for w in qweights.values())
    compute = [r["in_dtype"] for r in rows if r["op"] in ("conv2d", "dense")]
    other = [r["in_dtype"] for r in rows if r["op"] not in ("conv2d", "dense")]
    summary.update(calibrate_mode=qcfg.calibrate_mode, layers=len(compute),
                   int8_layers=compute.count("uint8"), int8_other_ops=other.count("uint8"),
                   weight_bytes=int(int8_bytes), fp32_weight_bytes=int(fp32_bytes),
                   weight_bytes_ratio=round(int8_bytes / fp32_bytes, 4),
                   mean_sqnr_db=round(float(np.mean([r["sqnr_db"] for r in rows if r["sqnr_db"] is not None] or [0])), 3))
    with atomic_dir(OUT) as out:
        save_relax(out, qmod, qweights)
        write_json(out / "report.json", {"summary": summary, "config": dataclasses.asdict(qcfg),
                                         "layers": rows})
        with open(out / "report.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"{OUT}: {summary['int8_layers']}/{summary['layers']} conv/dense layers int8 "
          f"(+{summary['int8_other_ops']} adds/pools), weights "
          f"{int8_bytes / 1e6:.2f} MB ({summary['weight_bytes_ratio']:.1%} of fp32), "
          f"mean layer SQNR {summary['mean_sqnr_db']} dB")


if __name__ == "__main__":
    main()
