"""Requantize epilogues fused into one rounding conversion (`pipeline.requantize`)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.compile import build
from pipeline.quantize.realize import round_half_even_te
from pipeline.relax_io import ENTRY
from pipeline.requantize import fuse_requantize


def requantize_model(zero_point: int, lo: int, hi: int, n: int = 64, dequantize: bool = False,
                     centre: bool = False):
    """x (float32) -> uint8(clip(round_half_even(x) + zp, lo, hi)), as the quantizer emits it;
    `dequantize`: cast straight back to float32, `centre`: minus the zero point (a residual
    add's operand, `realize_add`)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, n), "float32"))
    with bb.function(ENTRY, [x], attrs={"num_input": 1}):
        with bb.dataflow():
            v = bb.emit_te(round_half_even_te, x, primfunc_name_hint="round_half_even")
            if zero_point:
                v = bb.emit(relax.op.add(v, relax.const(float(zero_point), "float32")))
            v = bb.emit(relax.op.clip(v, lo, hi))
            y = bb.emit(relax.op.astype(v, "uint8"))
            if dequantize:
                y = bb.emit(relax.op.astype(y, "float32"))
            if centre:
                y = bb.emit(relax.op.subtract(y, relax.const(float(zero_point), "float32")))
            y = bb.emit_output(y)
        bb.emit_func_output(y)
    return bb.get()


def run(mod, x):
    vm = relax.VirtualMachine(build(mod, tvm.target.Target("llvm")), tvm.cpu())
    return vm[ENTRY](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("zero_point,lo,hi",
                         [(0, 0, 255), (128, 0, 255), (3, 3, 200), (250, 0, 255)])
def test_fused_requantize_gives_the_same_bytes(zero_point, lo, hi):
    """Halves round to even, values beyond the clamp in both directions, every zero point,
    values past int32 (where the fused op's conversion overflows) and just below 2^31 (where
    adding the zero point wraps): the fused op must match the quantizer's own ops and numpy
    byte for byte."""
    rng = np.random.default_rng(zero_point)
    values = np.concatenate([np.arange(-6, 6) + 0.5,  # ties: -5.5 .. 5.5
                             [-1e9, 1e9, -300.5, 300.5, lo - zero_point - 0.5,
                              hi - zero_point + 0.5],
                             [3e9, -3e9, 2.0 ** 31, -(2.0 ** 31), 2.0 ** 31 - 128, 1e30, -1e30],
                             rng.uniform(-400, 400, 39)]).astype(np.float32)[None]
    mod = requantize_model(zero_point, lo, hi, values.shape[1])
    fused = fuse_requantize(mod)
    assert "round_half_even" not in fused[ENTRY].script()
    assert any(gv.name_hint.startswith("round_to_uint8") for gv in fused.functions)
    expected = np.clip(np.rint(values) + zero_point, lo, hi).astype(np.uint8)
    np.testing.assert_array_equal(run(mod, values), expected)
    np.testing.assert_array_equal(run(fused, values), expected)


@pytest.mark.parametrize("hi,saturating", [(255, True), (200, False)])
def test_upper_clamp_at_255_is_the_saturating_store(hi, saturating):
    """With hi = 255 no float minimum is left: the narrowing store saturates
    (`vpmovusdb`); a lower hi keeps an integer minimum and a plain narrowing."""
    from test_packed_conv import X86  # cascadelake: AVX-512 code, compiled, not run

    mod = fuse_requantize(requantize_model(0, 0, hi, 256))
    asm = build(mod, X86).mod.imports[0].inspect_source("asm")
    assert "vminps" not in asm
    assert ("vpmovusdb" in asm) == saturating


def test_other_epilogues_are_left_alone():
    """A clamp that does not fit uint8 keeps the quantizer's ops, and so does a value cast
    straight back to float (there LLVM keeps it in float: fewer instructions unfused)."""
    mod = requantize_model(0, -5, 255)
    assert fuse_requantize(mod) is mod
    mod = requantize_model(0, 0, 255, dequantize=True)
    assert fuse_requantize(mod) is mod


@pytest.mark.parametrize("zero_point,lo,hi", [(0, 0, 255), (77, 0, 255), (3, 3, 200)])
def test_residual_operand_is_the_clamped_rounding_itself(zero_point, lo, hi):
    """float32(uint8(clip(round(x) + zp, lo, hi))) - zp, a residual add's operand, becomes
    clip(round(x), lo - zp, hi - zp): no uint8 cast left, the same floats."""
    values = np.concatenate([np.arange(-6, 6) + 0.5, [-1e9, 1e9, -300.5, 300.5],
                             np.random.default_rng(1).uniform(-400, 400, 48)]
                            ).astype(np.float32)[None]
    mod = requantize_model(zero_point, lo, hi, values.shape[1], dequantize=True, centre=True)
    fused = fuse_requantize(mod)
    assert '"uint8"' not in fused[ENTRY].script()
    expected = (np.clip(np.rint(values) + zero_point, lo, hi) - zero_point).astype(np.float32)
    np.testing.assert_array_equal(run(mod, values), expected)
    np.testing.assert_array_equal(run(fused, values), expected)
