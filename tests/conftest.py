"""Shared test helpers: the repo root and a compile-and-run of Relax modules."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Calibration statistics of the test models go to a throwaway cache, not ~/.cache/tvmq.
os.environ.setdefault("TVMQ_CACHE", tempfile.mkdtemp(prefix="tvmq-test-cache-"))


@pytest.fixture
def run_relax(tmp_path):
    """Build `mod` with its weights for generic llvm, run it on `x`, return the logits."""
    from pipeline.compile import export
    from pipeline.runner import Runner

    def run(mod, weights, x):
        folder = tmp_path / f"build{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        export(folder, mod, weights, {"name": "llvm", "kind": "llvm"}, "fp32")
        return Runner(folder).run_batch(x)

    return run


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """The project in a temporary git repo (`<tmp>/tvmq`), tiny params, after one `dvc repro`.

    Shared by test_plots and test_remote (one pipeline run); the folder next to it is where the
    committed default remote (`../tvmq-dvc-remote` from the repo) resolves.
    """
    from dvc_repo import tiny_repo

    return tiny_repo(tmp_path_factory.mktemp("shared") / "tvmq")
