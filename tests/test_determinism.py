"""The tiny pipeline run from scratch in two temporary repos (at different paths) writes
byte-identical outputs, all but the timing measurements: the Relax and int8 modules, their
weights and reports, the Keras file, the builds (library, weights, manifest), the evaluation.

The first run is the session's `tiny_pipeline` (other tests read it, commit in it and push from
it, but never rerun a stage there); the second is its first commit (project files and tiny
params, before any run) cloned into another folder and reproduced there with an empty DVC cache
and an empty calibration cache ($TVMQ_CACHE): every stage runs, nothing is restored. Cloning
(rather than copying the project again) keeps both runs on the same source even while the
project is being edited. Because the outputs are reproducible, rerunning a stage reproduces its
output hash and DVC does not rerun the stages below it.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dvc_repo import ran_stages, sh, stale_stages

# Wall-clock measurements (latency samples, latency/throughput/memory metrics): differ per run.
TIMING = {"artifacts/measure/latency.csv", "metrics/measure.json"}
# Named explicitly so that a renamed or missing file fails instead of dropping out of the check.
REPRODUCIBLE = [
    "artifacts/keras/model.keras", "artifacts/keras/card.json",
    "artifacts/relax/model.py", "artifacts/relax/model.params", "artifacts/relax/model.tflite",
    "artifacts/relax/summary.json",
    "artifacts/quantize/model.py", "artifacts/quantize/model.params",
    "artifacts/quantize/report.json", "artifacts/quantize/report.csv",
    *(f"artifacts/tune/{v}/{f}" for v in ("fp32", "int8")
      for f in ("database_workload.json", "database_tuning_record.json", "tuning.json")),
    *(f"artifacts/build/{v}/{f}" for v in ("fp32", "int8")
      for f in ("manifest.json", "model.params", "model.so")),
    "artifacts/evaluate/accuracy.csv", "artifacts/evaluate/predictions.csv",
    "artifacts/evaluate/chelsea.json", "metrics/evaluate.json",
    "artifacts/measure/sizes.csv", "artifacts/measure/run.json",
]


def outputs(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes()
            for folder in ("artifacts", "metrics") for p in sorted((repo / folder).rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def second_run(tiny_pipeline, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("determinism")
    repo = folder / "tvmq"
    first_commit = sh(tiny_pipeline, "git", "rev-list", "--max-parents=0", "HEAD").stdout.strip()
    sh(folder, "git", "clone", "-q", str(tiny_pipeline), str(repo))
    sh(repo, "git", "checkout", "-q", first_commit)
    assert not (repo / "artifacts").exists() and not (repo / ".dvc/cache").exists()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TVMQ_CACHE", str(folder / "tvmq-cache"))
        out = sh(repo, "dvc", "repro").stdout
    stages = set(sh(repo, "dvc", "stage", "list", "--name-only").stdout.split())
    assert ran_stages(out) == stages and "is cached" not in out, out
    assert list((folder / "tvmq-cache").glob("calibration/**/output.pkl")), "calibration not cached"
    return repo


def test_outputs_are_byte_identical_except_timing(tiny_pipeline, second_run):
    first, second = outputs(tiny_pipeline), outputs(second_run)
    assert sorted(first) == sorted(second)
    assert set(REPRODUCIBLE) | TIMING == set(first), sorted(set(first) ^ (set(REPRODUCIBLE) | TIMING))
    differ = [name for name in REPRODUCIBLE if first[name] != second[name]]
    assert differ == [], f"not byte-identical across two runs from scratch: {differ}"


def test_manifest_has_no_timing(second_run):
    manifest = json.loads((second_run / "artifacts/build/int8/manifest.json").read_text())
    assert not [key for key in manifest if "seconds" in key or "time" in key], sorted(manifest)


def test_forced_export_keras_leaves_downstream_up_to_date(second_run):
    """`dvc repro -f export_keras` writes the same model.keras, so nothing below it is stale."""
    assert ran_stages(sh(second_run, "dvc", "repro", "-f", "export_keras").stdout) == {"export_keras"}
    assert stale_stages(second_run) == set()
