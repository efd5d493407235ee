"""accuracy_budget: the most sensitive layers go back to float32 until agreement is in budget."""
from __future__ import annotations

import numpy as np

from pipeline import data
from pipeline.models.registry import tiny_cnn
from pipeline.quantize import QConfig, quantize_with_report
from pipeline.relax_import import keras_to_relax

MODEL = {"input_size": 32, "preprocess": {"crop_fraction": 1.0, "resize": "bilinear",
                                          "channel_order": "rgb", "mean": [127.5] * 3, "std": [127.5] * 3}}


def test_budget_puts_lowest_sqnr_layers_back_to_float():
    mod, weights = keras_to_relax(tiny_cnn(32, 0))
    crops, _ = data.crop_sets({"seed": 0, "calibration_size": 24, "evaluation_size": 1,
                               "min_crop": 0.6, "flip": True})
    x = data.crop_inputs(crops, MODEL)
    # 3-bit activations make the tiny model disagree with fp32, so the budget has work to do.
    cfg = QConfig(nbit_input=3, accuracy_budget=0.0, max_float_layers=2)
    _, _, records, summary = quantize_with_report(mod, weights, x, cfg)
    assert summary["budget_step0_agreement"] < 1.0
    kept = {r.name: r.kept_float for r in records if r.kept_float}
    by_budget = summary["budget_float_order"]
    assert 1 <= len(by_budget) <= 2, kept
    assert all(kept[n].startswith("accuracy_budget") for n in by_budget)
    assert set(summary["float_layers"]) == set(kept)
    steps = [v for k, v in summary.items() if k.startswith("budget_step")]
    assert summary["calibration_agreement_top1"] == steps[-1]
    # the layer chosen first is the one that adds the most noise (lowest layer SQNR)
    plain = quantize_with_report(mod, weights, x, QConfig(nbit_input=3))[2]
    layer = {r.name: r.layer_sqnr_db for r in plain if r.op in ("conv2d", "dense") and not r.kept_float}
    assert by_budget[0] == min(layer, key=layer.get)
    assert np.isfinite(steps).all()
