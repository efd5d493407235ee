"""benchmarks/kernel_times.py still runs on a built model: its tables, and its A/B verdict on two
builds' logits (the timings themselves are the script's business, not a test's)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "kernel_times.py"


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """Two builds of one tiny Keras model, one with other weights, one with another input."""
    import keras

    from pipeline.compile import export
    from pipeline.relax_import import keras_to_relax

    folders = {}
    for name, seed, size in (("a", 0, 8), ("a_again", 0, 8), ("other", 1, 8), ("small", 0, 6)):
        keras.utils.set_random_seed(seed)
        inp = keras.Input((size, size, 3))
        out = keras.layers.Dense(5)(keras.layers.Flatten()(keras.layers.Conv2D(16, 3)(inp)))
        mod, weights = keras_to_relax(keras.Model(inp, out))
        folders[name] = tmp_path_factory.mktemp(name)
        export(folders[name], mod, weights, {"name": "llvm", "kind": "llvm"}, "fp32")
    return folders


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--calls", "3"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_one_build_per_thread_count(builds):
    result = _run(builds["a"], "--threads", "1", "2")
    assert result.returncode == 0, result.stderr
    assert "1 thread(s): whole call median" in result.stdout
    assert "2 thread(s): whole call median" in result.stdout
    assert "1->2 speedup" in result.stdout and "| total " in result.stdout


def test_two_builds_says_whether_logits_are_bit_identical(builds):
    same = _run(builds["a"], builds["a_again"])
    assert same.returncode == 0, same.stderr
    assert "bit-identical on 4 random inputs: yes" in same.stdout
    assert "A/B" in same.stdout and "| total " in same.stdout
    other = _run(builds["a"], builds["other"])
    assert other.returncode == 0, other.stderr
    assert "bit-identical on 4 random inputs: NO" in other.stdout


def test_bad_arguments_fail_with_a_message(builds, tmp_path):
    missing = _run(tmp_path / "nothing")
    assert missing.returncode == 2 and "manifest.json is missing" in missing.stderr
    three = _run(builds["a"], builds["a"], builds["a"])
    assert three.returncode == 2 and "one build folder, or two" in three.stderr
    counts = _run(builds["a"], builds["other"], "--threads", "1", "2")
    assert counts.returncode == 2 and "one --threads count" in counts.stderr
    shapes = _run(builds["a"], builds["small"])
    assert shapes.returncode == 2 and "compare two builds of one model" in shapes.stderr
