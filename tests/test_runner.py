"""Runner.run reads aligned inputs in place and copies any other input, with the same logits."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import TvmqError


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    import keras

    from pipeline.compile import export
    from pipeline.relax_import import keras_to_relax
    from pipeline.runner import Runner

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Dense(5)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inp)))
    mod, weights = keras_to_relax(keras.Model(inp, out))
    folder = tmp_path_factory.mktemp("build")
    export(folder, mod, weights, {"name": "llvm", "kind": "llvm"}, "fp32")
    return Runner(folder)


def _inputs(x: np.ndarray) -> dict[str, np.ndarray]:
    """`x` as every kind of array run() must accept."""
    from pipeline.runner import aligned_input

    aligned = aligned_input(x.shape)
    aligned[...] = x
    raw = np.zeros(x.nbytes + 64, np.uint8)
    start = (-raw.ctypes.data % 64) + 4  # 4 bytes past an aligned address
    misaligned = raw[start:start + x.nbytes].view(np.float32).reshape(x.shape)
    misaligned[...] = x
    readonly = aligned.copy()
    readonly.flags.writeable = False
    fortran = np.asfortranarray(x)
    return {"aligned": aligned, "misaligned": misaligned, "readonly": readonly,
            "fortran": fortran, "float64": x.astype(np.float64), "list": x.tolist()}


def test_aligned_input_is_aligned():
    from pipeline.runner import INPUT_ALIGNMENT, aligned_input

    for shape, dtype in (((1, 224, 224, 3), "float32"), ((3, 5), "uint8"), ((7,), "float64")):
        a = aligned_input(shape, dtype)
        assert a.ctypes.data % INPUT_ALIGNMENT == 0 and a.flags.c_contiguous
        assert a.shape == shape and a.dtype == dtype and not a.any()


def test_every_input_kind_gives_the_same_logits(runner):
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32)
    expected = runner.run(x)
    assert expected.shape == (1, 5) and np.isfinite(expected).all()
    for kind, arg in _inputs(x).items():
        np.testing.assert_array_equal(runner.run(arg), expected, err_msg=kind)


def test_aligned_input_is_read_in_place(runner):
    """The aligned array itself is the kernels' input: it never lands in the staging buffer."""
    rng = np.random.default_rng(1)
    x1, x2 = (rng.normal(size=(1, 8, 8, 3)).astype(np.float32) for _ in range(2))
    runner.run(_inputs(x1)["misaligned"])
    np.testing.assert_array_equal(runner._staging.numpy(), x1)
    logits = runner.run(_inputs(x2)["aligned"])
    np.testing.assert_array_equal(runner._staging.numpy(), x1)  # x2 was read where it lies
    np.testing.assert_array_equal(logits, runner.run(_inputs(x2)["misaligned"]))


def test_logits_survive_the_next_call(runner):
    """run() returns the caller's own array, not a view of memory the next call reuses."""
    rng = np.random.default_rng(2)
    x1, x2 = (rng.normal(size=(1, 8, 8, 3)).astype(np.float32) for _ in range(2))
    first = runner.run(x1)
    kept = first.copy()
    second = runner.run(x2)
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second) and first.flags.owndata and first.flags.writeable


def test_wrong_shape_names_both_shapes(runner):
    with pytest.raises(TvmqError, match=r"input shape \[1, 8, 8, 4\] != built shape \[1, 8, 8, 3\]"):
        runner.run(np.zeros((1, 8, 8, 4), np.float32))
