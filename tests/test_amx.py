"""AMX convs (`packed_conv.packed_conv2d_amx`, `amx.tile_intrin`).

This CI machine has no AMX, so the tile code itself is checked in three ways: here, the AMX
kernels' packing, accumulator layout, blocking and epilogue run as plain loops (the same
schedule without the tile intrinsic) and must match the generic build bit for bit; the
Sapphire Rapids build must really contain the tile instructions (and no VNNI loop) for those
convs; and where the CPU has AMX the tile code runs and must match too (run by hand on a lent
Intel host for 16 conv shapes and the whole int8 EfficientNet-Lite0 and ResNet50: every
output bit-identical to the VNNI build's).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.amx import tile_intrin
from pipeline.compile import build, has_amx, packed_kernels, specialize
from pipeline.errors import TvmqError
from pipeline.packed_conv import pack_amx_weight, pack_convolutions
from pipeline.relax_io import ENTRY, weight_params
from pipeline.runner import check_host_supports, cpu_flags
from test_packed_conv import X86, conv_model

SPR = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"})
needs_amx = pytest.mark.skipif("amx_int8" not in cpu_flags(),
                               reason="this CPU has no AMX (cannot run Sapphire Rapids tile code)")

# (in channels, out channels, size, kernel, stride, padding, groups): each routed to AMX
AMX_CASES = [
    (256, 128, 14, 1, 1, 0, 1),    # 14x14: 196 positions in 224, input interleaved in place
    (128, 512, 28, 1, 1, 0, 1),    # input interleaved in place, 784 positions padded to 800
    (200, 96, 7, 1, 1, 0, 1),      # 200 inputs padded to 256 (gathered), separate epilogue (7x7)
    (96, 128, 8, 1, 1, 0, 1),      # 96 inputs padded to 128: zero-padded copy, then interleaved
    (160, 80, 14, 1, 2, 0, 1),     # strided (gathered copy), 80 outputs padded to 96
    (256, 96, 7, 3, 1, 1, 1),      # 3x3: flat over the padded width, taps = shifted B tiles
    (96, 80, 12, 3, 1, 1, 1),      # 3x3 over 96 inputs (padded to 128) and 80 outputs
    (288, 72, 9, 5, 1, 2, 1),      # 5x5, 288 inputs padded to 320, 72 outputs to 96
    (256, 80, 10, 3, 1, 0, 1),     # 3x3 without padding
]


def _run(mod, weights, x, target, amx):
    packed, packed_weights = pack_convolutions(mod, weights, int8=True, amx=amx)
    vm = relax.VirtualMachine(build(packed, target, "default"), tvm.cpu())
    args = [tvm.runtime.tensor(packed_weights[p.name]) for p in weight_params(packed)]
    # other data first, as test_packed_conv.run does: unwritten outputs cannot pass by chance
    vm[ENTRY](tvm.runtime.tensor(np.ascontiguousarray(x[..., ::-1, :])), *args)
    return vm[ENTRY](tvm.runtime.tensor(x), *args).numpy(), packed


def _generic(mod, weights, x):
    vm = relax.VirtualMachine(build(mod, X86, "none"), tvm.cpu())
    args = [tvm.runtime.tensor(weights[p.name]) for p in weight_params(mod)]
    return vm[ENTRY](tvm.runtime.tensor(x), *args).numpy()


@pytest.mark.parametrize("case", AMX_CASES, ids=lambda c: "c{}o{}s{}k{}st{}".format(*c[:5]))
def test_amx_kernel_layout_matches_generic_build(case):
    """Run on any CPU: the AMX kernel's schedule with the tile multiply left as loops."""
    mod, x, weights = conv_model(True, *case, residual=case[0] == 256)
    got, packed = _run(mod, weights, x, X86, amx=True)
    assert packed_kernels(packed)["packed_conv2d_amx"] == 1
    np.testing.assert_array_equal(got, _generic(mod, weights, x))


@pytest.mark.parametrize("case", AMX_CASES[:5], ids=lambda c: "c{}o{}s{}k{}".format(*c[:4]))
def test_sapphire_rapids_build_multiplies_on_tiles(case):
    mod, _, weights = conv_model(True, *case)
    assert has_amx(SPR) and not has_amx(X86)
    packed, _ = specialize(mod, weights, SPR, "default")
    assert packed_kernels(packed)["packed_conv2d_amx"] == 1
    asm = build(packed, SPR, "default").mod.imports[0].inspect_source("asm")
    for instruction in ("ldtilecfg", "tileloadd", "tdpbsud", "tilestored"):
        assert re.search(rf"\b{instruction}\b", asm), instruction
    assert "vpdpbusd" not in asm  # the whole conv runs on tiles, no VNNI fallback


def test_small_and_strided_convs_keep_vnni_on_amx_targets():
    """64 or fewer inputs or outputs (the tile set-up and input copy cost more than AMX
    saves), strided KxK (no flat tap layout)."""
    for case in [(64, 256, 56, 1, 1, 0, 1), (256, 64, 56, 1, 1, 0, 1), (64, 128, 14, 3, 1, 1, 1),
                 (256, 256, 14, 3, 2, 1, 1)]:
        mod, _, weights = conv_model(True, *case)
        packed, _ = specialize(mod, weights, SPR, "default")
        counts = packed_kernels(packed)
        assert counts["packed_conv2d_amx"] == 0 and counts["packed_conv2d_u8s8"] == 1, case


def test_amx_weight_layout():
    w = (np.arange(40 * 100 * 9).reshape(40, 100, 3, 3) % 251 - 125).astype(np.int8)
    packed = pack_amx_weight(w)
    assert packed.shape == (4, 2, 3, 3, 16, 64)  # 40 -> 64 outputs, 100 -> 128 inputs, zeros
    assert packed[2, 1, 2, 0, 7, 35] == w[2 * 16 + 7, 64 + 35, 2, 0]
    assert packed[2, 1, 0, 0, 8, 0] == 0 and packed[0, 1, 1, 1, 0, 36] == 0  # output 40, input 100


def test_tile_intrin_is_registered_once_per_shape():
    assert tile_intrin(3) == tile_intrin(3) != tile_intrin(3, (3, 3), 9)
    with pytest.raises(ValueError, match=">= 2 x 64 input channels"):
        tile_intrin(1)


@pytest.mark.skipif("amx_tile" in cpu_flags(), reason="checks the refusal on a CPU without AMX")
def test_runner_refuses_amx_builds_on_cpus_without_amx():
    cfg = {"name": "sapphirerapids", "requires": ["avx512f", "amx_tile", "amx_int8"]}
    with pytest.raises(TvmqError, match="amx_tile"):
        check_host_supports(cfg)


def test_runner_refuses_amx_builds_when_linux_refuses_the_tile_registers(monkeypatch):
    """A CPU with AMX whose kernel denies the tiles (arch_prctl fails): a clear error, not the
    SIGILL the first tile instruction would raise."""
    import pipeline.runner as runner

    cfg = {"name": "sapphirerapids", "requires": ["avx512f", "amx_tile", "amx_int8"]}
    monkeypatch.setattr(runner, "cpu_flags", lambda: {"avx512f", "amx_tile", "amx_int8"})
    monkeypatch.setattr(runner, "enable_amx", lambda: False)
    with pytest.raises(TvmqError, match="Linux refused"):
        check_host_supports(cfg)
    monkeypatch.setattr(runner, "enable_amx", lambda: True)
    check_host_supports(cfg)  # granted: nothing to refuse


@needs_amx
@pytest.mark.parametrize("case", AMX_CASES, ids=lambda c: "c{}o{}s{}k{}st{}".format(*c[:5]))
def test_amx_tiles_match_generic_build(case):
    from pipeline.runner import enable_amx

    assert enable_amx()
    mod, x, weights = conv_model(True, *case, residual=case[0] == 256)
    got, _ = _run(mod, weights, x, SPR, amx=True)
    np.testing.assert_array_equal(got, _generic(mod, weights, x))
