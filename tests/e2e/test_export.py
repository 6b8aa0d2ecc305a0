"""`virtplane export` into a Git checkout of examples/ (a server with controllers, so a pool makes its VMs)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import REPO, ServerProcess, start_server
from tests.e2e.helpers import Cli

CLUSTER = """\
apiVersion: virtplane.io/v1
kind: Cluster
metadata:
  name: elsewhere
spec: {}
"""


@pytest.fixture(scope="module")
def vp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    etcd = EmbeddedEtcd(tmp_path_factory.mktemp("export-etcd"))
    etcd.start()
    try:
        server: ServerProcess = start_server(tmp_path_factory.mktemp("export-server"), etcd=etcd)
        try:
            yield Cli(server)
        finally:
            server.stop()
    finally:
        etcd.stop()


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo)})
    return done.stdout


def test_export_into_a_checkout_of_examples_changes_nothing(vp: Cli, tmp_path: Path) -> None:
    """examples/ applied, then exported back into a Git checkout of it: `git status` is clean — the defaults
    and comments the files hold stay, a pool's VMs and disks and another source's objects are not written."""
    repo = shutil.copytree(REPO / "examples", tmp_path / "examples")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "examples")
    assert vp("apply", "-f", str(repo), "--source", "examples").returncode == 0
    assert vp("apply", "-f", "-", "--source", "other", input=CLUSTER).returncode == 0
    deadline = time.monotonic() + 60
    while "ci-runners-0" not in vp("get", "vms", "-o", "name").stdout:  # the pool made its VMs
        assert time.monotonic() < deadline, "the pool's VMs never appeared"
        time.sleep(0.2)
    done = vp("export", "-d", str(repo), "--source", "examples")
    assert done.returncode == 0, done.stderr
    assert _git(repo, "status", "--porcelain") == "", _git(repo, "diff")
    # A change in the store is one changed line in Git.
    web = (repo / "vms" / "web.yaml").read_text().replace("size: 2Gi\n    # Memory", "size: 3Gi\n    # Memory", 1)
    assert vp("apply", "-f", "-", "--source", "examples", input=web).returncode == 0
    assert vp("export", "-d", str(repo), "--source", "examples").returncode == 0
    changed = [line for line in _git(repo, "diff", "-U0").splitlines() if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changed == ["-    size: 2Gi", "+    size: 3Gi"], changed
