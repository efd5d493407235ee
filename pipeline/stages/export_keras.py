"""Stage 1: build the configured Keras classifier and save it with a JSON card."""
from __future__ import annotations

import numpy as np

from .. import params
from ..atomic import atomic_dir, write_json
from ..errors import cli_main
from ..keras_io import save_keras
from ..models.registry import build_keras_model

OUT = "artifacts/keras"


def card(model, model_cfg: dict) -> dict:
    import keras

    weights = model.get_weights()
    return {
        "name": model_cfg["name"],
        "keras_name": model.name,
        "keras_version": keras.__version__,
        "input_shape": [int(d) for d in model.inputs[0].shape[1:]],
        "output_shape": [int(d) for d in model.outputs[0].shape[1:]],
        "preprocess": model_cfg["preprocess"],
        "weights": model_cfg.get("weights"),
        "parameter_count": int(sum(int(np.prod(w.shape)) for w in weights)),
        "weight_bytes": int(sum(w.nbytes for w in weights)),
        "layers": len(model.layers),
    }


@cli_main
def main() -> None:
    model_cfg = params.load()["model"]
    model = build_keras_model(model_cfg)
    with atomic_dir(OUT) as out:
        save_keras(model, out / "model.keras")
        write_json(out / "card.json", card(model, model_cfg))
    print(f"{OUT}: {model_cfg['name']}, {model.count_params():,} parameters")


if __name__ == "__main__":
    main()
