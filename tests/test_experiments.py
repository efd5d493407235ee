"""`dvc exp run` on the tiny pipeline, in a copy of the session's `tiny_pipeline` repo with the
baseline run committed.

Experiments compose params.yaml from conf/ plus their `-S` overrides (Hydra is enabled in
.dvc/config); the temporary repo's conf/config.yaml has the tiny settings baked in
(tests/dvc_repo.py), so every experiment here runs the tiny model. Checks: an experiment reruns
exactly the stages downstream of what it changes; a queued sweep run by `dvc queue start -j 2`
gives one experiment per calibration mode, listed by `dvc exp show --json` with numeric metrics,
and `dvc metrics diff` compares one with the baseline; no queue worker outlives the test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from dvc_repo import TINY, bake_overrides, git_commit, ran_stages, sh, stale_stages
from pipeline.params import compose as compose_params

INT8_PATH = {"quantize", "tune@int8", "build@int8", "evaluate", "measure"}
BUILDS_ON = {"tune@fp32", "tune@int8", "build@fp32", "build@int8", "evaluate", "measure"}
SWEEP = ["max", "percentile", "mse"]
QUEUE_TIMEOUT_S = 420


def worker_pids(repo: Path) -> list[int]:
    """Processes DVC's queue started (workers and experiment runs), from its pid files."""
    exps = repo / ".dvc/tmp/exps"
    return [int(p.read_text()) for p in [*exps.glob("celery/*.pid"), *exps.glob("run/*/*.pid")]
            if p.read_text().strip().isdigit()]


def alive(pid: int) -> bool:
    """`pid` runs and is still a dvc process (not a zombie, not a reused pid)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return "\nState:\tZ" not in status and b"dvc" in cmdline


def stop_queue(repo: Path, wait_s: float = 60) -> list[int]:
    """`dvc queue stop`, wait for the queue's processes to exit, kill (by pid) any that do not.
    Returns the pids that had to be killed."""
    sh(repo, "dvc", "queue", "stop", check=False)
    deadline = time.monotonic() + wait_s
    while any(alive(pid) for pid in worker_pids(repo)) and time.monotonic() < deadline:
        time.sleep(1)
    killed = [pid for pid in worker_pids(repo) if alive(pid)]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    return killed


@pytest.fixture(scope="module")
def exp_repo(tiny_pipeline, tmp_path_factory) -> Path:
    """A copy of `tiny_pipeline` (its git history, DVC cache and outputs; not .dvc/tmp) with the
    baseline run (dvc.lock, metrics/) committed, as experiments need."""
    repo = tmp_path_factory.mktemp("experiments") / "tvmq"
    dvc_dir = tiny_pipeline / ".dvc"
    shutil.copytree(tiny_pipeline, repo, symlinks=True,
                    ignore=lambda folder, names: ["tmp"] if Path(folder) == dvc_dir else [])
    git_commit(repo, "baseline run", "--allow-empty")
    assert stale_stages(repo) == set()
    try:
        yield repo
    finally:
        stop_queue(repo)
        assert not [pid for pid in worker_pids(repo) if alive(pid)]


def reset_to_baseline(repo: Path) -> None:
    """Undo the experiment `dvc exp run` applied to the workspace."""
    sh(repo, "git", "reset", "-q", "--hard")
    sh(repo, "dvc", "checkout", "--force")


def test_tiny_settings_baked_into_conf_compose_like_the_overrides(tmp_path):
    """The test repos' conf/config.yaml (TINY baked in by tests/dvc_repo.py), composed with no
    overrides as `dvc exp run` does, gives what TINY as overrides gives on the project's conf/."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    expected = compose_params(tmp_path, TINY)
    bake_overrides(tmp_path / "conf/config.yaml", TINY)
    assert compose_params(tmp_path) == expected


@pytest.mark.parametrize("overrides, expected", [
    (["quantize=kl_divergence"], INT8_PATH),
    (["quantize.global_scale=4.0", "quantize=global_scale"], INT8_PATH),
    (["target=llvm"], BUILDS_ON),
], ids=["kl_divergence", "global_scale", "target_llvm"])
def test_exp_run_reruns_exactly_the_dependent_stages(exp_repo, overrides, expected):
    try:
        out = sh(exp_repo, "dvc", "exp", "run", *[a for o in overrides for a in ("-S", o)]).stdout
        composed = (exp_repo / "params.yaml").read_text()
    finally:
        reset_to_baseline(exp_repo)
    assert ran_stages(out) == expected, out
    assert "Ran experiment(s)" in out, out
    # Composed from the repo's conf/ (tiny settings baked in) plus the overrides: the tiny
    # model, not the project's default, with exactly the requested change.
    assert composed == compose_params(exp_repo, [*TINY, *overrides])
    assert yaml.safe_load(composed)["model"]["name"] == "tiny_cnn"
    assert stale_stages(exp_repo) == set()


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its data (params, metrics, ...)."""
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    return {exp["name"]: exp["revs"][0]["data"]
            for baseline in shown for exp in baseline.get("experiments") or []}


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_queued_sweep_runs_with_two_workers(exp_repo):
    for mode in SWEEP:
        out = sh(exp_repo, "dvc", "exp", "run", "--queue", "-n", f"sweep-{mode}",
                 "-S", f"quantize={mode}").stdout
        assert "Queued experiment" in out, out
    start = time.monotonic()
    try:
        assert "Started '2'" in sh(exp_repo, "dvc", "queue", "start", "-j", "2").stdout
        while True:  # `dvc queue start` returns at once; the workers run in the background
            status = sh(exp_repo, "dvc", "queue", "status").stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            assert time.monotonic() - start < QUEUE_TIMEOUT_S, status
            time.sleep(5)
    finally:
        killed = stop_queue(exp_repo)
    assert not killed, f"queue processes still running after `dvc queue stop`: {killed}"
    for mode in SWEEP:
        assert re.search(rf"sweep-{mode}\s.*\bSuccess\b", status), status

    exps = experiments(exp_repo)
    assert {f"sweep-{m}" for m in SWEEP} <= set(exps), list(exps)
    modes = {}
    for mode in SWEEP:
        data = exps[f"sweep-{mode}"]
        params = data["params"]["params.yaml"]["data"]
        modes[mode] = params["quantize"]["calibrate_mode"]
        assert params["model"]["name"] == "tiny_cnn"
        evaluate = data["metrics"]["metrics/evaluate.json"]["data"]
        measure = data["metrics"]["metrics/measure.json"]["data"]
        assert 0 <= evaluate["int8"]["agreement_top1"] <= 1, evaluate
        assert number(evaluate["int8"]["max_abs_logit_diff"]), evaluate
        assert evaluate["fp32"]["agreement_top1"] == 1.0
        assert measure["int8"]["latency_ms_median"] > 0
        assert number(measure["sizes"]["int8_params_bytes"])
    assert modes == {m: m for m in SWEEP}

    diff = json.loads(sh(exp_repo, "dvc", "metrics", "diff", "--all", "--json", "HEAD",
                         "sweep-percentile").stdout)
    baseline = json.loads((exp_repo / "metrics/evaluate.json").read_text())
    experiment = exps["sweep-percentile"]["metrics"]["metrics/evaluate.json"]["data"]
    int8 = diff["metrics/evaluate.json"]
    for key in ("agreement_top1", "max_abs_logit_diff"):
        assert int8[f"int8.{key}"]["old"] == baseline["int8"][key]
        assert int8[f"int8.{key}"]["new"] == experiment["int8"][key]
    assert "int8.latency_ms_median" in diff["metrics/measure.json"]
    assert "sweep-percentile" in sh(exp_repo, "dvc", "exp", "show", "--csv").stdout
