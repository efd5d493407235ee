"""Save (reproducibly) and load the Keras model written by the export_keras stage."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from .errors import TvmqError

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp; Keras uses it for its JSON entries
_SHARED_ID = re.compile(rb'"shared_object_id": (\d+)')


def save_keras(model, path: str | Path) -> None:
    """`model.save(path)` (.keras zip), then make the file byte-identical across runs.

    Keras 3 writes three run-dependent things: `date_saved` (wall clock) in metadata.json, the
    wall-clock zip timestamp of model.weights.h5, and `shared_object_id` in config.json, which
    is Python's id() of an object shared by several layers (e.g. a dtype policy). The date is
    dropped, every entry gets the zip epoch, and the ids are renumbered 1, 2, ... in order of
    first appearance (same id -> same number, so sharing is preserved on load). The weights and
    the rest of the config are left as Keras wrote them.
    """
    path = Path(path)
    model.save(path)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    ids: dict[bytes, int] = {}
    with zipfile.ZipFile(path, "w") as dst:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata).encode()
            elif info.filename == "config.json":
                data = _SHARED_ID.sub(
                    lambda m: b'"shared_object_id": %d' % ids.setdefault(m.group(1), len(ids) + 1),
                    data)
            fixed = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            dst.writestr(fixed, data)


def load_keras(path: str | Path):
    import keras

    path = Path(path)
    if not path.is_file():
        raise TvmqError(f"{path} is missing: run the export_keras stage (`dvc repro`).")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:
        raise TvmqError(f"cannot load {path} ({type(err).__name__}); the file is corrupt or was "
                        "written by another Keras version: rerun `dvc repro -f export_keras`.") from None


def keras_logits(model, xs, batch_size: int = 32):
    """Keras outputs for a stack of inputs, in batches (float32 numpy)."""
    import numpy as np

    return np.asarray(model.predict(xs, batch_size=batch_size, verbose=0), dtype=np.float32)
