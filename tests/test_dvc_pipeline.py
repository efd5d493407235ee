"""The DVC pipeline end to end on the tiny model, in a temporary git repo.

Checks what users rely on: a second `dvc repro` reruns nothing, and a params change makes
exactly the dependent stages stale. Also runs a build with plain TVM + its manifest only.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from dvc_repo import compose, ran_stages, sh, stale_stages, tiny_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return tiny_repo(tmp_path_factory.mktemp("tvmq"))


def test_second_repro_reruns_nothing(repo):
    assert stale_stages(repo) == set()
    out = sh(repo, "dvc", "repro").stdout
    assert "Running stage" not in out, out


def test_measure_param_change_reruns_only_measure(repo):
    compose(repo, "measure.repeat=4")
    try:
        assert stale_stages(repo) == {"measure"}
    finally:
        compose(repo)
    assert stale_stages(repo) == set()


def repro(repo: Path) -> set[str]:
    """`dvc repro`; the stages it executed or restored from the run cache."""
    return ran_stages(sh(repo, "dvc", "repro").stdout)


def test_target_change_reruns_tune_build_evaluate_measure(repo):
    compose(repo, "target=llvm")
    try:  # downstream of them: stale as they rerun
        assert stale_stages(repo) == {"tune@fp32", "tune@int8", "build@fp32", "build@int8"}
        ran = repro(repo)
    finally:
        compose(repo)
    assert {s.split("@")[0] for s in ran} == {"tune", "build", "evaluate", "measure"}, ran
    assert repro(repo) == ran  # back to the committed params: restored from the run cache


def test_quantize_change_reruns_only_the_int8_path(repo):
    compose(repo, "quantize=percentile")
    try:
        ran = repro(repo)
    finally:
        compose(repo)
    assert ran == {"quantize", "tune@int8", "build@int8", "evaluate", "measure"}, ran
    repro(repo)


def test_metrics_are_numeric_and_complete(repo):
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    measure = json.loads((repo / "metrics/measure.json").read_text())
    assert evaluate["fp32"]["agreement_top1"] == 1.0
    assert evaluate["fp32"]["evaluation_count"] == 24
    assert 0.5 <= evaluate["int8"]["agreement_top1"] <= 1.0
    assert measure["int8"]["latency_ms_median"] > 0
    assert measure["sizes"]["int8_params_bytes"] < 0.5 * measure["sizes"]["fp32_params_bytes"]
    assert evaluate["keras"]["labelled_count"] == 20
    assert measure["fp32"]["latency_ms_median"] > 0 and measure["keras"]["latency_ms_median"] > 0
    assert measure["sizes"]["fp32_params_bytes"] > 0
    shown = sh(repo, "dvc", "metrics", "show", "--json").stdout
    assert "agreement_top1" in shown and "latency_ms_median" in shown

    def numeric(node):
        if isinstance(node, dict):
            return all(numeric(v) for v in node.values())
        return isinstance(node, (int, float)) and not isinstance(node, bool)

    assert numeric(evaluate) and numeric(measure)
    run = json.loads((repo / "artifacts/measure/run.json").read_text())
    assert run["threads"] == measure["threads"] and "llvm" in run["target"]


def test_artifacts_are_written(repo):
    relax = repo / "artifacts/relax"
    assert (relax / "model.py").read_text().startswith("# from tvm.script")
    summary = json.loads((relax / "summary.json").read_text())
    assert summary["import_check"]["max_abs_logit_diff"] <= summary["import_check"]["tolerance"]
    card = json.loads((repo / "artifacts/keras/card.json").read_text())
    assert card["input_shape"] == [32, 32, 3] and card["parameter_count"] > 0
    chelsea = json.loads((repo / "artifacts/evaluate/chelsea.json").read_text())
    assert len(chelsea["fp32"]) == 5 and chelsea["fp32"] == chelsea["keras"]
    assert len(chelsea["int8"]) == 5
    report = json.loads((repo / "artifacts/quantize/report.json").read_text())
    assert report["summary"]["int8_layers"] >= 4 and report["summary"]["float_layers"] == ["conv2d0"]
    assert "int8" in (repo / "artifacts/quantize/model.py").read_text()
    assert not list(repo.glob("artifacts/**/*.tmp"))


def test_built_int8_variant_has_no_float_conv_or_dense(repo):
    """The int8 build's op list: every conv2d/matmul accumulates in int32, except the layers
    the quantization report keeps in float (the first conv by default)."""
    manifest = json.loads((repo / "artifacts/build/int8/manifest.json").read_text())
    report = json.loads((repo / "artifacts/quantize/report.json").read_text())
    layers = [op for op in manifest["ops"] if op["op"] in ("relax.nn.conv2d", "relax.matmul")]
    float_layers = [op for op in layers if op["dtype"] != "int32"]
    assert len(float_layers) == len(report["summary"]["float_layers"]) == 1, float_layers
    assert len(layers) - len(float_layers) == report["summary"]["int8_layers"]
    fp32 = json.loads((repo / "artifacts/build/fp32/manifest.json").read_text())
    assert all(op["dtype"] == "float32" for op in fp32["ops"]
               if op["op"] in ("relax.nn.conv2d", "relax.matmul"))


def test_build_runs_with_plain_tvm_and_the_manifest(repo):
    """The exported build needs only tvm.runtime + manifest.json, not the tvmq package."""
    script = """
import json, numpy as np, tvm
from tvm import relax
m = json.load(open('manifest.json'))
lib = tvm.runtime.load_module(m['library'])
vm = relax.VirtualMachine(lib, tvm.cpu())
p = tvm.runtime.load_param_dict(open(m['params_file'], 'rb').read())
spec = m['inputs'][0]
x = tvm.runtime.tensor(np.zeros(spec['shape'], spec['dtype']))
y = vm[m['entry']](x, *[p[q['name']] for q in m['params']]).numpy()
assert list(y.shape) == m['outputs'][0]['shape'], y.shape
print('ok', m['target'], len(m['ops']))
"""
    out = sh(repo / "artifacts/build/fp32", sys.executable, "-I", "-c", script).stdout
    assert out.startswith("ok")


def test_stage_error_is_one_paragraph_and_exit_2(repo, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(repo / "pipeline", bad / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    params = (repo / "params.yaml").read_text().replace("name: tiny_cnn", "name: no_such_model")
    (bad / "params.yaml").write_text(params)
    result = sh(bad, sys.executable, "-m", "pipeline.stages.export_keras", check=False)
    assert result.returncode == 2
    assert "unknown model.name='no_such_model'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (bad / "artifacts").exists()
