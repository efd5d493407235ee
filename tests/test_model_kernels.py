"""Every conv and dense kernel of the benchmark models gets the packed schedules.

`PackedConvSchedule` hands a fused kernel it cannot schedule to the generic loops: right
results, but 10-100x slower, and nothing else notices (a kernel change once sent one ResNet50
int8 kernel there: the model 1.6x slower). So the real models' kernels are checked here, in
both variants: scheduling only, no build, no VNNI hardware needed.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import keras
import pytest
import tvm
import yaml
from tvm.relax.backend.cpu_generic import pipeline as cpu

from pipeline import data
from pipeline.compile import specialize
from pipeline.models.registry import build_keras_model
from pipeline.quantize import QConfig, quantize_with_report
from pipeline.relax_import import keras_to_relax
from pipeline.schedules import PackedConvSchedule

ROOT = Path(__file__).resolve().parent.parent
X86 = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
PACKED = ("packed_conv2d", "packed_depthwise2d", "packed_dense")  # kernels the rule must take


def _unscheduled(mod, weights) -> tuple[int, list[str]]:
    """(packed conv/dense kernels, names of those the packed rule returns no schedule for)."""
    packed, _ = specialize(mod, weights, X86, "default")
    with X86:
        fused = tvm.transform.Sequential(cpu.legalize_passes(X86))(packed)
    kernels = {gv.name_hint: f for gv, f in fused.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and any(k in gv.name_hint for k in PACKED)}
    return len(kernels), [n for n, f in kernels.items()
                          if PackedConvSchedule().apply(f, X86, False) is None]


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet50"])
def test_every_conv_and_dense_kernel_of_the_model_is_scheduled(name):
    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    if name == "resnet50":
        cfg["weights"] = None  # offline: seeded random weights, as benchmarks/compare_engines
    keras.utils.set_random_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # Keras's "Saved artifact at ..." listing
        mod, weights = keras_to_relax(build_keras_model(cfg))
    crops, _ = data.crop_sets(yaml.safe_load((ROOT / "conf" / "dataset" / "photos.yaml")
                                              .read_text()))
    qmod, qweights, _, _ = quantize_with_report(mod, weights, data.crop_inputs(crops[:1], cfg),
                                                QConfig())
    for variant, (m, w) in {"fp32": (mod, weights), "int8": (qmod, qweights)}.items():
        count, unscheduled = _unscheduled(m, w)
        assert count > 10, f"{name} {variant}: only {count} packed kernels"
        assert not unscheduled, f"{name} {variant}: generic loops for {unscheduled}"
