"""Save and load a Relax module as TVMScript text plus a `.params` file of its weights.

The weights are function parameters (inputs first, `num_input` of them), so the text stays small
and parses back with `tvm.script.from_source`; weights are bound by parameter name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm

from .atomic import atomic_path
from .errors import TvmqError

ENTRY = "main"
SCRIPT_FILE = "model.py"
PARAMS_FILE = "model.params"


def save_params(path: Path, weights: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(tvm.runtime.save_param_dict({k: tvm.runtime.tensor(v) for k, v in weights.items()}))


def load_params(path: Path) -> dict[str, np.ndarray]:
    try:
        return {k: v.numpy() for k, v in tvm.runtime.load_param_dict(Path(path).read_bytes()).items()}
    except (OSError, tvm.error.TVMError, RuntimeError) as err:
        raise TvmqError(f"cannot read params file {path} ({err}); rerun the stage that wrote it "
                        "(`dvc repro`).") from None


def save_relax(folder: Path, mod: tvm.IRModule, weights: dict[str, np.ndarray]) -> None:
    """Write `model.py` (TVMScript) and `model.params` into `folder`."""
    with atomic_path(Path(folder) / SCRIPT_FILE) as tmp:
        tmp.write_text(mod.script())
    save_params(Path(folder) / PARAMS_FILE, weights)


def load_relax(folder: Path) -> tuple[tvm.IRModule, dict[str, np.ndarray]]:
    """Parse `model.py` back and read `model.params`; check that they belong together."""
    folder = Path(folder)
    script = folder / SCRIPT_FILE
    if not script.is_file():
        raise TvmqError(f"{script} is missing: run the stage that produces it (`dvc repro`).")
    try:
        mod = tvm.script.from_source(script.read_text())
    except Exception as err:
        raise TvmqError(f"{script} is not valid TVMScript ({type(err).__name__}); it was edited "
                        "or truncated: rerun `dvc repro` to regenerate it.") from None
    weights = load_params(folder / PARAMS_FILE)
    expected = [p.name for p in weight_params(mod)]
    if sorted(expected) != sorted(weights):
        raise TvmqError(f"{folder / PARAMS_FILE} does not match {script}: parameters "
                        f"{sorted(set(expected) ^ set(weights))[:5]} differ. Rerun `dvc repro`.")
    return mod, weights


def num_inputs(mod: tvm.IRModule) -> int:
    return int(mod[ENTRY].attrs["num_input"])


def weight_params(mod: tvm.IRModule) -> list:
    """The weight parameters of `main`, in call order."""
    return list(mod[ENTRY].params[num_inputs(mod):])
