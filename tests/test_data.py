"""Bundled photos, preprocessing and the calibration/evaluation crop sets."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import data
from pipeline.errors import TvmqError

DATASET = {"seed": 0, "calibration_size": 50, "evaluation_size": 60, "min_crop": 0.6, "flip": True}
MODEL = {"input_size": 32, "preprocess": {"crop_fraction": 1.0, "resize": "bicubic",
                                          "channel_order": "rgb", "mean": [127.0] * 3, "std": [128.0] * 3}}


def test_labelled_photos_come_from_foolbox_with_labels():
    labelled = [p for p in data.photos() if p.label is not None]
    assert len(labelled) == 20
    assert labelled[0].name == "imagenet_00_243" and labelled[0].label == 243
    assert any(p.name == "skimage_chelsea" for p in data.photos())
    assert len(data.class_names()) == 1000


def test_crop_sets_are_deterministic_and_disjoint():
    cal, ev = data.crop_sets(DATASET)
    cal2, ev2 = data.crop_sets(DATASET)
    assert (cal, ev) == (cal2, ev2)
    assert len(cal) == 50 and len(ev) == 60
    assert not set(cal) & set(ev)
    assert data.crop_sets({**DATASET, "seed": 1})[0] != cal
    assert any(c.flip for c in cal) and not any(c.flip for c in data.crop_sets({**DATASET, "flip": False})[0])


def test_preprocessing_normalises_and_orders_channels():
    region = np.zeros((10, 10, 3), np.uint8)
    region[..., 0] = 255
    rgb = data.preprocess(region, 4, MODEL["preprocess"])
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb[0, 0], [1.0, -127 / 128, -127 / 128])
    bgr = data.preprocess(region, 4, {**MODEL["preprocess"], "channel_order": "bgr"})
    np.testing.assert_allclose(bgr[0, 0], rgb[0, 0][::-1])
    with pytest.raises(TvmqError, match="model.preprocess.resize"):
        data.preprocess(region, 4, {**MODEL["preprocess"], "resize": "lanczos9"})


def test_crop_inputs_shape():
    cal, _ = data.crop_sets(DATASET)
    x = data.crop_inputs(cal[:5], MODEL)
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0


def test_invalid_sizes_are_rejected():
    with pytest.raises(TvmqError, match="dataset.calibration_size"):
        data.crop_sets({**DATASET, "calibration_size": 0})
