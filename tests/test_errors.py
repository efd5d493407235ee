"""Bad input gets one clear paragraph naming the file / layer / parameter and the fix."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import TvmqError
from pipeline.keras_io import load_keras
from pipeline.models.registry import build_keras_model
from pipeline.quantize import QConfig
from pipeline.runner import check_host_supports

INPUT = {"input_size": 32, "preprocess": {}}


def test_unknown_model_name():
    with pytest.raises(TvmqError, match=r"unknown model.name='nope'.*conf/model"):
        build_keras_model({"name": "nope"})


def test_keras_file_missing(tmp_path):
    with pytest.raises(TvmqError, match=r"model.path=.*is not a file"):
        build_keras_model({"name": "keras_file", "path": str(tmp_path / "missing.keras"), **INPUT})


def test_keras_file_corrupt(tmp_path):
    bad = tmp_path / "corrupt.keras"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(TvmqError, match=r"cannot load Keras model .*corrupt.keras"):
        build_keras_model({"name": "keras_file", "path": str(bad), **INPUT})
    with pytest.raises(TvmqError, match=r"corrupt.keras.*rerun `dvc repro -f export_keras`"):
        load_keras(bad)


def test_keras_file_input_size_mismatch(tmp_path):
    import keras

    path = tmp_path / "m.keras"
    inp = keras.Input((16, 16, 3))
    keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp))).save(path)
    with pytest.raises(TvmqError, match=r"shape \(16, 16, 3\).*model.input_size"):
        build_keras_model({"name": "keras_file", "path": str(path), **INPUT})


def test_imagenet_weights_unavailable_offline(tmp_path, monkeypatch):
    """Keras's loader cannot fetch the file here: the message says where to put it or to use null."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    import keras

    def no_download(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", no_download)
    with pytest.raises(TvmqError, match=r"resnet50.*model.weights=null"):
        build_keras_model({"name": "resnet50", "weights": "imagenet", "input_size": 224})


def test_invalid_weights_option():
    with pytest.raises(TvmqError, match=r"model.weights='foo'"):
        build_keras_model({"name": "mobilenet_v2", "weights": "foo", "input_size": 224})


@pytest.mark.parametrize("option, value", [("calibrate_mode", "magic"), ("nbit_input", 9),
                                           ("weight_scale", "log"), ("accuracy_budget", 2.0),
                                           ("rounding", "down")])
def test_invalid_quantize_option_is_named(option, value):
    with pytest.raises(TvmqError, match=rf"quantize.{option}="):
        QConfig(**{option: value})


def test_unknown_quantize_key():
    with pytest.raises(TvmqError, match=r"unknown quantize option\(s\) \['bits'\]"):
        QConfig.from_params({"bits": 8})


def test_target_needing_missing_cpu_features():
    with pytest.raises(TvmqError, match=r"needs CPU features \['no_such_flag'\].*target=llvm"):
        check_host_supports({"name": "future", "requires": ["avx512f", "no_such_flag"]})


def test_mismatched_input_shape(tmp_path, run_relax):
    import keras

    from pipeline.compile import export
    from pipeline.relax_import import keras_to_relax
    from pipeline.runner import Runner

    inp = keras.Input((8, 8, 3))
    mod, weights = keras_to_relax(keras.Model(inp, keras.layers.Conv2D(2, 3)(inp)))
    export(tmp_path, mod, weights, {"name": "llvm", "kind": "llvm"}, "fp32")
    with pytest.raises(TvmqError, match=r"input shape \[1, 4, 4, 3\] != built shape \[1, 8, 8, 3\]"):
        Runner(tmp_path).run(np.zeros((1, 4, 4, 3), np.float32))
