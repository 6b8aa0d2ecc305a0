"""Image import on a real lab host (root, marked lab): a vmdk made with `qemu-img convert` is imported into
a qcow2 Disk of the shared storage domain, `qemu-img compare` (not our code) finds the same content, and a
guest boots with it attached."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from controller.dev.lab.guest import GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.lab.vplab import LabCluster, lab_cluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def cluster(
    lab: Lab, guest_image: GuestImage, accel: str, etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabCluster]:
    yield from lab_cluster(lab, guest_image, tmp_path_factory.mktemp("vp"), etcd, accel)


def test_imported_vmdk_is_identical_and_boots(cluster: LabCluster) -> None:
    shared = cluster.lab.shared_dir
    raw = shared / "seed.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "32M"], check=True)
    with open(raw, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"VIRTPLANE-IMPORTED-CONTENT")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(shared / "legacy.vmdk")],
                   check=True)
    disk = cluster.disk("imported", source={"import": {"path": "legacy.vmdk", "format": "vmdk"}})
    cluster.apply(disk)
    status = cluster.wait_phase("Disk", "imported", "Ready", timeout=120)
    assert status["format"] == "qcow2" and status["capacity"] == 32 << 20
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), status["path"]], check=True)
    cluster.apply(cluster.vm("boots-imported", ["imported"]))
    cluster.wait_phase("VirtualMachine", "boots-imported", "Running", timeout=120)
    cluster.wait_booted("boots-imported", timeout=120)
