"""Stage 2: Keras -> TFLite -> Relax (NCHW, weights lifted), checked against Keras.

Writes artifacts/relax/{model.py, model.params, model.tflite, summary.json}. Fails when the
compiled fp32 Relax module's logits differ from Keras's by more than `to_relax.tolerance`.
(This is the "Relay" stage of older TVM write-ups: TVM >= 0.20 has only Relax.)
"""
from __future__ import annotations

import numpy as np

from .. import data, params
from ..atomic import atomic_dir, write_json
from ..errors import TvmqError, cli_main
from ..keras_io import keras_logits, load_keras
from ..relax_import import keras_to_tflite, lift_constants, op_counts, tflite_to_relax, to_nchw
from ..relax_io import save_relax

OUT = "artifacts/relax"


def import_check(mod, weights, keras_model, model_cfg: dict, n_inputs: int) -> dict:
    """Max/mean |logit difference| between compiled Relax (generic llvm) and Keras."""
    import tempfile

    from ..compile import export
    from ..runner import Runner

    _, x, _ = data.labelled_inputs(model_cfg)
    x = x[:max(1, n_inputs)]
    with tempfile.TemporaryDirectory() as tmp:
        export(tmp, mod, weights, {"name": "llvm", "kind": "llvm"}, "fp32")
        tvm_out = Runner(tmp).run_batch(x)
    diff = np.abs(tvm_out - keras_logits(keras_model, x))
    return {"inputs": len(x), "max_abs_logit_diff": float(diff.max()),
            "mean_abs_logit_diff": float(diff.mean())}


@cli_main
def main() -> None:
    cfg = params.load()
    keras_model = load_keras("artifacts/keras/model.keras")
    print("converting Keras -> TFLite ...", flush=True)
    flatbuffer = keras_to_tflite(keras_model)
    print("importing TFLite -> Relax, converting layout to NCHW ...", flush=True)
    mod, weights = lift_constants(to_nchw(tflite_to_relax(flatbuffer, keras_model)))
    print("checking compiled Relax against Keras ...", flush=True)
    check = import_check(mod, weights, keras_model, cfg["model"], cfg["to_relax"]["check_inputs"])
    tolerance = float(cfg["to_relax"]["tolerance"])
    if not check["max_abs_logit_diff"] <= tolerance:
        raise TvmqError(f"Relax import of artifacts/keras/model.keras differs from Keras by "
                        f"{check['max_abs_logit_diff']:.3g} (> to_relax.tolerance={tolerance}) on "
                        f"{check['inputs']} photos: a layer converted wrongly. Report it with the "
                        "model, or raise the tolerance if the difference is expected.")
    with atomic_dir(OUT) as out:
        save_relax(out, mod, weights)
        (out / "model.tflite").write_bytes(flatbuffer)
        write_json(out / "summary.json", {
            "op_counts": op_counts(mod),
            "weights": len(weights),
            "weight_bytes": int(sum(w.nbytes for w in weights.values())),
            "import_check": {**check, "tolerance": tolerance},
        })
    print(f"{OUT}: {len(weights)} weight tensors, max |logit diff| vs Keras "
          f"{check['max_abs_logit_diff']:.2e}")


if __name__ == "__main__":
    main()
