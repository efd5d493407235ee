"""Helpers for the DVC end-to-end tests: the project copied into a temporary git repo with the
tiny model's params, and `dvc`/`git` run in it with the test's interpreter first on PATH.

The tiny settings (TINY) are written into the copy's conf/config.yaml, not only passed as
overrides: `dvc exp run` composes params.yaml from conf/ with nothing but its own `-S`
overrides, so an experiment in the temporary repo composes the tiny config too."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

PROJECT_FILES = ["pipeline", "conf", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvc/plots",
                 ".dvcignore", ".gitignore", "plots_template"]
TINY = ["model=tiny_cnn", "dataset.calibration_size=16", "dataset.evaluation_size=24",
        "measure.repeat=3"]


def _env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PYTHONPATH="")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def compose(repo: Path, *overrides: str) -> None:
    sh(repo, sys.executable, "-m", "pipeline.params", *overrides)


def ran_stages(output: str) -> set[str]:
    """Stages a `dvc repro`/`dvc exp run` output says it executed or restored from the run cache
    (not those skipped as unchanged)."""
    return set(re.findall(r"Running stage '([^']+)'", output)
               + re.findall(r"Stage '([^']+)' is cached", output))


def stale_stages(repo: Path) -> set[str]:
    return set(json.loads(sh(repo, "dvc", "status", "--json").stdout or "{}"))


def git_commit(repo: Path, message: str, *options: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message, *options)


def bake_overrides(config_file: Path, overrides: list[str]) -> None:
    """Make Hydra `overrides` part of `config_file` (conf/config.yaml): `group=option` picks the
    option in the defaults list, `a.b=value` sets the value in the file's own section (`_self_`
    is last in the defaults list, so it wins over the groups). Comments are not kept."""
    config = yaml.safe_load(config_file.read_text())
    defaults = config["defaults"]
    assert defaults[-1] == "_self_", defaults
    groups = [next(iter(d)) if isinstance(d, dict) else d for d in defaults]
    for override in overrides:
        key, value = override.split("=", 1)
        if key in groups:
            defaults[groups.index(key)] = {key: value}
        else:
            *parents, leaf = key.split(".")
            node = config
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = yaml.safe_load(value)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))


def tiny_repo(repo: Path) -> Path:
    """Copy the project into `repo` with TINY baked into conf/config.yaml, `git init`, compose
    params.yaml, commit, `dvc repro`."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, repo / name)
    bake_overrides(repo / "conf/config.yaml", TINY)
    sh(repo, "git", "init", "-q")
    compose(repo)
    git_commit(repo, "tiny")
    sh(repo, "dvc", "repro")
    return repo
