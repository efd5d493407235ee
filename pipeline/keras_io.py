"""Load the Keras model written by the export_keras stage."""
from __future__ import annotations

from pathlib import Path

from .errors import TvmqError



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
