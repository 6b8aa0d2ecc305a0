"""Backup / restore and versioned objects through real servers on a real etcd (libvirt test driver).

- an object an older server stored in an older API version (written with etcdctl) is served converted,
  and a file in that version is accepted and stored in the current one;
- `virtplane backup` saves every spec with its server metadata (uid, generation...) and every status,
  private to its owner; `restore` refuses a store that is not empty (exit 3, nothing written); after a
  wipe, a new server restores exactly what was saved (a second backup is identical).
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import yaml

from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import REPO, etcdctl_run, start_server
from tests.e2e.helpers import Cli

OLD_VM = {"apiVersion": "virtplane.io/v1beta1", "kind": "VirtualMachine",
          "metadata": {"name": "from-old-server", "uid": "11111111-2222-4333-8444-555555555555", "generation": 3},
          "spec": {"cluster": "main", "runStrategy": "Halted", "cpu": 2, "memory": "1Gi"}}


def _comparable(backup: dict[str, Any]) -> tuple[Any, Any]:
    return backup["objects"], backup["statuses"]


def test_versions_backup_and_restore(tmp_path: Path) -> None:
    etcd = EmbeddedEtcd(tmp_path / "etcd")
    etcd.start()
    try:
        server = start_server(tmp_path / "one", "--no-controllers", etcd=etcd)
        try:
            cli = Cli(server)
            examples = shutil.copytree(REPO / "examples", tmp_path / "examples")
            cli.ok("apply", "-f", str(examples), "--source", "examples")
            # (1) versions: stored by an older server, and applied from an old file
            etcdctl_run(etcd.endpoint, "put", "/virtplane/specs/VirtualMachine/from-old-server", json.dumps(OLD_VM))
            served = cli.obj("vm", "from-old-server")
            assert served is not None and served["apiVersion"] == "virtplane.io/v1"
            assert served["spec"]["cpu"]["cores"] == 2 and served["spec"]["memory"]["size"] == "1Gi"
            old_file = {**OLD_VM, "metadata": {"name": "old-file"}}
            cli("apply", "-f", "-", input=yaml.safe_dump(old_file)).check_returncode()
            stored = json.loads(etcdctl_run(etcd.endpoint, "get", "--print-value-only",
                                            "/virtplane/specs/VirtualMachine/old-file"))
            assert stored["apiVersion"] == "virtplane.io/v1" and stored["spec"]["cpu"]["cores"] == 2
            # (2) backup
            path = tmp_path / "store.json"
            cli.ok("backup", "-o", str(path))
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            saved = json.loads(path.read_text())
            names = {(o["kind"], o["metadata"]["name"]) for o in saved["objects"]}
            assert ("VirtualMachine", "web-1") in names and ("VirtualMachine", "from-old-server") in names
            assert all(o["metadata"].get("uid") for o in saved["objects"])
            old = next(o for o in saved["objects"] if o["metadata"]["name"] == "from-old-server")
            assert old["metadata"]["uid"] == OLD_VM["metadata"]["uid"] and old["metadata"]["generation"] == 3
            # (3) not into a store that holds objects
            refused = cli("restore", str(path))
            assert refused.returncode == 3 and "not" in refused.stderr and "empty" in refused.stderr, refused.stderr
        finally:
            server.stop()
        # (4) wipe, restore into a new server, back up again: the same
        etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")
        server = start_server(tmp_path / "two", "--no-controllers", etcd=etcd)
        try:
            cli = Cli(server)
            done = cli.ok("restore", str(path))
            assert f"restored {len(saved['objects'])} object(s)" in done
            again = tmp_path / "again.json"
            cli.ok("backup", "-o", str(again))
            assert _comparable(json.loads(again.read_text())) == _comparable(saved)
            web = cli.obj("vm", "web-1")
            assert web is not None and web["metadata"]["source"] == "examples"
        finally:
            server.stop()
    finally:
        etcd.stop()
