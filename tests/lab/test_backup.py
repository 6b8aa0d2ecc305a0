"""Backup, wipe, restore on a real lab host (root, marked lab): the restored server takes its running VM
over without restarting it (same libvirt domain id, same QEMU pid, one boot on the console)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.dev.lab.guest import GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import etcdctl_run, start_server
from tests.e2e.helpers import virsh, wait_for
from tests.lab.vplab import LabCluster, lab_cluster

pytestmark = pytest.mark.lab

HOST = "lab-1"
READY_MARKER = "VIRTPLANE-GUEST-READY"


@pytest.fixture(scope="module")
def cluster(
    lab: Lab, guest_image: GuestImage, accel: str, etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabCluster]:
    yield from lab_cluster(lab, guest_image, tmp_path_factory.mktemp("vp"), etcd, accel)


def _qemu_pid(cluster: LabCluster, name: str) -> int:
    return int((cluster.lab.dir / "hosts" / HOST / "run" / "qemu" / f"{name}.pid").read_text().strip())


def test_restored_server_takes_running_vms_over_without_restart(
    cluster: LabCluster, etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    name = "kept-running"
    cluster.apply(cluster.disk(f"{name}-root"), cluster.vm(name, [f"{name}-root"]))
    cluster.wait_phase("VirtualMachine", name, "Running", timeout=120)
    cluster.wait_booted(name, timeout=120)
    uri = cluster.uri(HOST)
    domid, pid = virsh(uri, "domid", name).strip(), _qemu_pid(cluster, name)
    uid = cluster.get("VirtualMachine", name)["metadata"]["uid"]

    backup = tmp_path / "backup.json"
    done = cluster.vp("backup", "-o", str(backup))
    assert done.returncode == 0, done.stderr
    # the server goes, and so does everything it stored: its data dir and every key in etcd
    cluster.server.stop()
    shutil.rmtree(cluster.server.data_dir, ignore_errors=True)
    etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")
    cluster.server = start_server(tmp_path / "new-server", etcd=etcd)
    try:
        _restore_and_check(cluster, backup, name, uid, domid, pid)
    finally:
        cluster.server.stop()


def _restore_and_check(cluster: LabCluster, backup: Path, name: str, uid: str, domid: str, pid: int) -> None:
    uri = cluster.uri(HOST)
    assert cluster.get("VirtualMachine", name) == {}  # an empty store
    done = cluster.vp("restore", str(backup))
    assert done.returncode == 0, done.stdout + done.stderr

    vm = cluster.get("VirtualMachine", name)
    assert vm["metadata"]["uid"] == uid
    wait_for(f"{name} Ready after restore", lambda: any(
        c["type"] == "Ready" and c["status"] == "True" for c in cluster.status("VirtualMachine", name).get(
            "conditions", [])), 60)
    assert virsh(uri, "domid", name).strip() == domid, "the domain was restarted"
    assert _qemu_pid(cluster, name) == pid, "QEMU was restarted"
    assert cluster.console(name).count(READY_MARKER) == 1, "the guest booted again"
    events = cluster.vp("events", "--for", f"vm/{name}")
    assert "DefineDomain" not in events.stdout and "StartDomain" not in events.stdout, events.stdout
