"""params.yaml is composed from conf/ exactly as DVC does, and staleness is detected."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from pipeline import params
from pipeline.errors import TvmqError


def test_committed_params_yaml_matches_conf():
    result = subprocess.run([sys.executable, "-m", "pipeline.params", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_fails_on_stale_params(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    (tmp_path / "params.yaml").write_text(params.compose(tmp_path))
    measure = tmp_path / "conf" / "measure" / "default.yaml"
    measure.write_text(measure.read_text().replace("repeat: 20", "repeat: 21"))
    stale = params.compose(tmp_path)
    assert stale != (tmp_path / "params.yaml").read_text()
    assert yaml.safe_load(stale)["measure"]["repeat"] == 21


def test_check_cli_reports_the_difference(tmp_path, monkeypatch):
    monkeypatch.setattr(params, "ROOT", tmp_path)
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    assert params.main([]) == 0
    assert params.main(["--check"]) == 0
    (tmp_path / "params.yaml").write_text("model: {}\n")
    assert params.main(["--check"]) == 1


def test_overrides_select_group_options():
    composed = yaml.safe_load(params.compose(ROOT, ["model=tiny_cnn", "target=llvm"]))
    assert composed["model"]["name"] == "tiny_cnn"
    assert composed["target"]["mcpu"] is None
    assert set(composed) >= {"model", "target", "quantize", "dataset", "measure", "runtime"}


def test_unknown_option_names_the_group_and_choices():
    with pytest.raises(TvmqError, match=r"model/nope.*efficientnet_lite0"):
        params.compose(ROOT, ["model=nope"])


def test_missing_params_file_says_how_to_make_it(tmp_path):
    with pytest.raises(TvmqError, match="python -m pipeline.params"):
        params.load(tmp_path / "params.yaml")
