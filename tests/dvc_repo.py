"""Helpers for the DVC end-to-end tests: the project copied into a temporary git repo with the
tiny model's params, and `dvc`/`git` run in it with the test's interpreter first on PATH."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PROJECT_FILES = ["pipeline", "conf", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore",
                 ".gitignore", "dvc_plots"]
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


def stale_stages(repo: Path) -> set[str]:
    return set(json.loads(sh(repo, "dvc", "status", "--json").stdout or "{}"))


def git_commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def tiny_repo(repo: Path) -> Path:
    """Copy the project into `repo`, `git init`, compose the tiny params, commit, `dvc repro`."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, repo / name)
    sh(repo, "git", "init", "-q")
    compose(repo, *TINY)
    git_commit(repo, "tiny")
    sh(repo, "dvc", "repro")
    return repo
