"""Keras -> TFLite -> Relax import: numerical parity, NCHW layout, TVMScript round trip."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tvm
from keras import layers

from pipeline.errors import TvmqError
from pipeline.relax_import import keras_to_relax, keras_to_tflite, op_counts, tflite_to_relax
from pipeline.relax_io import load_relax, save_relax


def _model(body, shape=(16, 16, 3), name="m"):
    keras.utils.set_random_seed(1)
    inp = keras.Input(shape, name="input")
    return keras.Model(inp, body(inp), name=name)


def _randomize_bn(model):
    """Give BatchNorm layers non-trivial statistics so folding is really tested."""
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    return model


def conv_bn_relu6(x):
    x = layers.Conv2D(8, 3, padding="same")(x)
    x = layers.BatchNormalization(epsilon=1e-3)(x)
    return layers.ReLU(6.0)(x)


def asymmetric_pad_stride2(x):
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
    return layers.Conv2D(8, 3, strides=2, padding="valid", activation="relu")(x)


def depthwise_block(x):
    x = layers.Conv2D(8, 1)(x)
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU(6.0)(y)
    y = layers.Conv2D(8, 1)(y)
    return layers.Add()([x, y])


def pools_and_dense(x):
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.AveragePooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return layers.Dense(10)(x)


def padded_stem(x):
    """ResNet50's stem: ZeroPadding2D(3) + 7x7 'valid' stride-2 conv (TFLite keeps the pad:
    its SAME padding would be 2 and 3)."""
    x = layers.ZeroPadding2D(3)(x)
    return layers.Conv2D(8, 7, strides=2, padding="valid", activation="relu")(x)


def same_padding_stride2(x):
    x = layers.Conv2D(8, 3, strides=2, padding="same")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    return layers.Dense(5, activation="relu")(x)


def pool_then_branches(x, activation="relu"):
    """ResNet50's stem: zero pad + max pool of a ReLU's output (the pad folds into the pool,
    which then runs NCHW), then two convolution branches read the pooled map."""
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation=activation)(x)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.MaxPooling2D(3, strides=2)(x)
    x = layers.Add()([layers.Conv2D(4, 1)(x), layers.Conv2D(4, 3, padding="same")(x)])
    return layers.GlobalAveragePooling2D()(x)


def pool_of_signed_values(x):
    """The same without the ReLU: a zero pad may beat a window's negative maximum, so it stays
    (NHWC, pad has no layout rule) and the pool with it."""
    return pool_then_branches(x, activation=None)


CASES = [conv_bn_relu6, asymmetric_pad_stride2, depthwise_block, pools_and_dense,
         same_padding_stride2, pool_then_branches, pool_of_signed_values, padded_stem]


@pytest.mark.parametrize("body", CASES, ids=lambda f: f.__name__)
def test_import_matches_keras(body, run_relax):
    model = _randomize_bn(_model(body))
    x = np.random.default_rng(2).normal(size=(3, 16, 16, 3)).astype("float32")
    mod, weights = keras_to_relax(model)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(run_relax(mod, weights, x), expected, atol=1e-4, rtol=1e-4)


def test_convolutions_run_in_nchw_with_a_single_input_transpose():
    model = _randomize_bn(_model(lambda x: pools_and_dense(depthwise_block(conv_bn_relu6(x)))))
    mod, weights = keras_to_relax(model)
    counts = op_counts(mod)
    assert counts["relax.permute_dims"] == 1, mod.script()
    assert counts["relax.clip"] == 2  # each ReLU6 survives as one op
    text = mod.script()
    assert 'data_layout="NHWC"' not in text and 'data_layout="NCHW"' in text
    assert all(isinstance(w, np.ndarray) for w in weights.values())
    assert "metadata" not in text  # weights are parameters, not inlined constants


def test_zero_pad_folds_into_a_max_pool_of_relu_output_only():
    counts = op_counts(keras_to_relax(_model(pool_then_branches, shape=(17, 17, 3)))[0])
    assert "relax.nn.pad" not in counts and counts["relax.permute_dims"] == 1  # the input's
    mod, _ = keras_to_relax(_model(pool_of_signed_values, shape=(17, 17, 3)))
    # input -> NCHW, conv output -> NHWC for the pad, pooled map -> NCHW once for both branches
    assert op_counts(mod)["relax.permute_dims"] == 3, mod.script()
    assert op_counts(mod)["relax.nn.pad"] == 1


def test_zero_padding_before_a_conv_becomes_its_padding():
    """ZeroPadding2D + 'valid' conv (ResNet50's stem) -> one conv padding by itself: no pad
    pass, and the input transpose is a plain one (numerical parity: test_import_matches_keras)."""
    mod, _ = keras_to_relax(_model(padded_stem))
    assert "relax.nn.pad" not in op_counts(mod), mod.script()
    assert "padding=[3, 3, 3, 3]" in mod.script()


def test_tvmscript_and_params_round_trip(tmp_path, run_relax):
    model = _model(depthwise_block)
    mod, weights = keras_to_relax(model)
    save_relax(tmp_path, mod, weights)
    mod2, weights2 = load_relax(tmp_path)
    tvm.ir.assert_structural_equal(mod, mod2)
    assert weights.keys() == weights2.keys()
    for k in weights:
        np.testing.assert_array_equal(weights[k], weights2[k])
    x = np.ones((1, 16, 16, 3), "float32")
    np.testing.assert_array_equal(run_relax(mod, weights, x), run_relax(mod2, weights2, x))


def test_layer_tflite_cannot_convert_is_named():
    import tensorflow as tf

    model = _model(lambda x: layers.Lambda(lambda t: tf.math.atan(t), name="my_atan")(x))
    with pytest.raises(TvmqError, match=r"'my_atan' \(Lambda\)"):
        keras_to_tflite(model)


def test_layer_tvm_cannot_convert_is_named():
    import tensorflow as tf

    reverse_cumsum = layers.Lambda(lambda t: tf.math.cumsum(t, axis=1, reverse=True), name="my_cumsum")
    model = _model(reverse_cumsum)
    with pytest.raises(TvmqError, match=r"'my_cumsum' \(Lambda\).*CUMSUM"):
        tflite_to_relax(keras_to_tflite(model), model)


def test_edited_script_and_mismatched_params_are_reported(tmp_path):
    mod, weights = keras_to_relax(_model(conv_bn_relu6))
    save_relax(tmp_path, mod, weights)
    (tmp_path / "model.py").write_text("this is not TVMScript")
    with pytest.raises(TvmqError, match="model.py is not valid TVMScript"):
        load_relax(tmp_path)
    save_relax(tmp_path, mod, {k: v for k, v in list(weights.items())[1:]})
    with pytest.raises(TvmqError, match="does not match"):
        load_relax(tmp_path)
