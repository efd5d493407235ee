"""Remote caches, round trip: `dvc push` from the tiny pipeline's repo, commit, `git clone` into
a fresh folder, `dvc pull`, and the clone is complete: `dvc repro` reruns nothing and
`dvc status -c` is clean. For the committed default remote (`local`: the folder
tvmq-dvc-remote next to the repo) and for an S3 remote (moto_server on 127.0.0.1, credentials
in the clone's uncommitted .dvc/config.local)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dvc_repo import git_commit, sh

BUCKET = "tvmq-dvc-cache"
CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


def moto_server() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto_server on a free loopback port with an empty bucket; stopped after the module."""
    exe = moto_server()
    if exe is None:
        pytest.skip("moto_server is missing (pip install 'moto[server]': pinned in requirements.txt)")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 60
        while True:
            try:
                direct.open(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"moto_server did not answer:\n{log.read_text()}")
                time.sleep(0.2)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def push_clone_pull(repo: Path, clone: Path, remote: list[str], local_config=()) -> None:
    """Push `repo`'s outputs, commit, clone it to `clone`, pull there and check it is complete."""
    assert json.loads(sh(repo, "dvc", "status", "--json").stdout or "{}") == {}
    sh(repo, "dvc", "push", *remote)
    git_commit(repo, "pipeline outputs", "--allow-empty")
    assert sh(repo, "git", "status", "--porcelain").stdout == ""
    assert ".dvc/config.local" not in sh(repo, "git", "ls-files").stdout.split()

    sh(repo.parent, "git", "clone", "-q", str(repo), str(clone))
    for args in local_config:
        sh(clone, "dvc", *args)
    assert not (clone / "artifacts").exists()
    sh(clone, "dvc", "pull", *remote)
    assert (clone / "artifacts/build/int8/model.so").exists()
    assert json.loads(sh(clone, "dvc", "status", "--json").stdout or "{}") == {}
    out = sh(clone, "dvc", "repro").stdout
    assert "Running stage" not in out, out
    status = sh(clone, "dvc", "status", "--cloud", *remote, "--json").stdout
    assert json.loads(status or "{}") == {}, status


def test_default_local_remote_round_trip(tiny_pipeline):
    remote = tiny_pipeline.parent / "tvmq-dvc-remote"
    assert sh(tiny_pipeline, "dvc", "remote", "default").stdout.strip() == "local"
    push_clone_pull(tiny_pipeline, tiny_pipeline.parent / "clone-local", [])
    assert any(p.is_file() for p in remote.rglob("*")), f"nothing pushed to {remote}"


def test_s3_remote_round_trip(tiny_pipeline, s3_endpoint):
    url = f"s3://{BUCKET}/tvmq"
    credentials = [("remote", "modify", "--local", "s3remote", k, v) for k, v in CREDENTIALS.items()]
    sh(tiny_pipeline, "dvc", "remote", "add", "s3remote", url)
    sh(tiny_pipeline, "dvc", "remote", "modify", "s3remote", "endpointurl", s3_endpoint)
    for args in credentials:
        sh(tiny_pipeline, "dvc", *args)
    assert "testing" not in (tiny_pipeline / ".dvc/config").read_text()
    push_clone_pull(tiny_pipeline, tiny_pipeline.parent / "clone-s3", ["-r", "s3remote"], credentials)
