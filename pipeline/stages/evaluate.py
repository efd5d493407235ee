"""Stage 6: accuracy of Keras and of every built variant on the bundled photos.

    python -m pipeline.stages.evaluate fp32 [int8 ...]

Writes metrics/evaluate.json (numeric, for `dvc metrics diff`), artifacts/evaluate/
predictions.csv (top-5 per image and variant), artifacts/evaluate/accuracy.csv (one row per
variant, fractions: plot data for `dvc plots`) and artifacts/evaluate/chelsea.json (the
top-5 class names per variant for skimage's chelsea photo).
"""
from __future__ import annotations

import csv
import sys

import numpy as np
from tqdm import tqdm

from .. import data, params
from ..accuracy import agreement, labelled_scores, topk
from ..atomic import atomic_dir, write_json
from ..errors import TvmqError, cli_main
from ..keras_io import keras_logits, load_keras
from ..runner import Runner, set_threads

OUT = "artifacts/evaluate"
ACCURACY_COLUMNS = ["variant", "labelled_top1", "labelled_top5", "agreement_top1",
                    "top1_in_reference_top5"]
METRICS = "metrics/evaluate.json"
CHELSEA = "skimage_chelsea"


def variant_logits(runner: Runner, xs: np.ndarray, desc: str) -> np.ndarray:
    return np.concatenate([runner.run(x[None]) for x in tqdm(xs, desc=desc, unit="img",
                                                             mininterval=5)])


@cli_main
def main(argv: list[str] | None = None) -> None:
    variants = sys.argv[1:] if argv is None else argv
    if not variants:
        raise TvmqError("usage: python -m pipeline.stages.evaluate VARIANT [VARIANT ...]")
    cfg = params.load()
    threads = set_threads(cfg["runtime"]["threads"])
    model_cfg = cfg["model"]
    names, x_lab, labels = data.labelled_inputs(model_cfg)
    _, eval_crops = data.crop_sets(cfg["dataset"])
    x_eval = data.crop_inputs(eval_crops, model_cfg)
    x_cat = data.photo_input(CHELSEA, model_cfg)
    classes = data.class_names()

    keras_model = load_keras("artifacts/keras/model.keras")
    logits = {"keras": (keras_logits(keras_model, x_lab), keras_logits(keras_model, x_eval),
                        keras_logits(keras_model, x_cat))}
    for variant in variants:
        runner = Runner(f"artifacts/build/{variant}")
        logits[variant] = (variant_logits(runner, x_lab, f"{variant} labelled"),
                           variant_logits(runner, x_eval, f"{variant} evaluation crops"),
                           runner.run(x_cat))

    ref_eval = logits["keras"][1]
    metrics = {"threads": threads}
    for name, (lab, ev, _) in logits.items():
        metrics[name] = labelled_scores(lab, labels)
        if name != "keras":
            metrics[name].update(agreement(ev, ref_eval))
    with atomic_dir(OUT) as out:
        with open(out / "predictions.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "set", "label", "engine", "top1", "top5"])
            image_names = names + [f"crop{i:03d}" for i in range(len(eval_crops))]
            image_labels = list(labels) + [""] * len(eval_crops)
            for engine, (lab, ev, _) in logits.items():
                top5 = topk(np.concatenate([lab, ev]), 5)
                for i, row in enumerate(top5):
                    writer.writerow([image_names[i], "labelled" if i < len(names) else "evaluation",
                                     image_labels[i], engine, row[0], " ".join(map(str, row))])
        with open(out / "accuracy.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(ACCURACY_COLUMNS)
            for name in logits:  # keras is the reference: its agreement cells stay empty
                m, n = metrics[name], metrics[name]["labelled_count"]
                writer.writerow([name, round(m["labelled_top1"] / n, 4), round(m["labelled_top5"] / n, 4),
                                 *(round(m[k], 4) if k in m else "" for k in ACCURACY_COLUMNS[3:])])
        write_json(out / "chelsea.json", {engine: [classes[i] for i in topk(cat, 5)[0]]
                                          for engine, (_, _, cat) in logits.items()})
    write_json(METRICS, metrics)
    for name in logits:
        print(name, metrics[name])


if __name__ == "__main__":
    main()
