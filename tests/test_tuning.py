"""pipeline.tuning + the tune stage: MetaSchedule records for the kernels the default schedules
leave generic, applied by build; trials 0 writes an empty, portable database."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax

from pipeline.compile import build, export, packed_kernels, specialize
from pipeline.relax_io import ENTRY, weight_params
from pipeline.stages import tune as tune_stage
from pipeline.tuning import RECORD_FILE, SUMMARY_FILE, has_records, tune, untuned_tasks
from test_packed_conv import GENERIC, X86, conv_model


def run(mod, weights, x, target, tuning_dir=None):
    mod, weights = specialize(mod, weights, target, "default")
    vm = relax.VirtualMachine(build(mod, target, "default", tuning_dir), tvm.cpu())
    args = [tvm.runtime.tensor(weights[p.name]) for p in weight_params(mod)]
    return vm[ENTRY](tvm.runtime.tensor(x), *args).numpy()


def test_untuned_tasks_leave_our_packed_kernels_out():
    """On a VNNI target the int8 conv is ours (not a task); on generic llvm it is a task."""
    mod, _, weights = conv_model(True, 16, 16, 14, 3, 1, 1, 1)
    assert [t for t in untuned_tasks(mod, weights, X86) if "conv" in t.task_name] == []
    assert [t.task_name for t in untuned_tasks(mod, weights, GENERIC) if "conv" in t.task_name]


def test_zero_trials_writes_an_empty_portable_database(tmp_path):
    mod, x, weights = conv_model(True, 16, 16, 14, 3, 1, 1, 1)
    summary = tune(mod, weights, X86, 0, tmp_path / "db")
    assert summary == {"trials": 0, "target": str(X86), "tasks": [], "records": 0, "kept": []}
    assert json.loads((tmp_path / "db" / SUMMARY_FILE).read_text()) == summary
    assert not has_records(tmp_path / "db")
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == sorted(
        ["database_workload.json", RECORD_FILE, SUMMARY_FILE])


def test_tuned_records_are_applied_by_build_and_give_the_same_result(tmp_path):
    """A few trials on generic llvm (no VNNI: the int8 conv is generic code). Kept as tuned
    (`only_faster=False`), build applies the records (manifest counts them) and the result
    stays bit-exact; by default only records faster than the default schedule stay."""
    mod, x, weights = conv_model(True, 16, 16, 14, 3, 1, 1, 1)
    summary = tune(mod, weights, GENERIC, 4, tmp_path / "db", only_faster=False)
    assert summary["records"] > 0 and any("conv" in t for t in summary["tasks"])
    assert has_records(tmp_path / "db") and not (tmp_path / "db" / "logs").exists()
    np.testing.assert_array_equal(run(mod, weights, x, GENERIC, tmp_path / "db"),
                                  run(mod, weights, x, GENERIC))
    (tmp_path / "out").mkdir()
    manifest = export(tmp_path / "out", mod, weights, {"name": "llvm", "kind": "llvm"}, "int8",
                      tmp_path / "db")
    assert manifest["tuning"]["records"] == summary["records"]

    kept = tune(mod, weights, GENERIC, 4, tmp_path / "kept")  # the stage's default
    assert set(kept["kept"]) <= set(kept["tasks"]) and (kept["records"] > 0) == bool(kept["kept"])


@pytest.mark.parametrize("trials, target, message", [
    (-1, {"name": "x86_avx512", "kind": "llvm", "mcpu": "cascadelake"}, "tune.trials=-1"),
    ("many", {"name": "x86_avx512", "kind": "llvm", "mcpu": "cascadelake"}, "whole number"),
    (8, {"name": "llvm", "kind": "llvm", "schedules": "none"}, "schedules: default"),
])
def test_tune_stage_rejects_bad_settings(monkeypatch, capsys, trials, target, message):
    """The stage exits 2 with a message naming tune.trials and what to do."""
    monkeypatch.setattr(tune_stage.params, "load", lambda: {"target": target,
                                                            "tune": {"trials": trials}})
    with pytest.raises(SystemExit, match="2"):
        tune_stage.main(["int8"])
    assert message in capsys.readouterr().err
