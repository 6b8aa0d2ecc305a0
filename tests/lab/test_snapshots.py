"""Snapshots and clones on real lab hosts through a real `virtplane server` (root only, marked lab).

Checked with virsh (snapshot-list, domstate) and qemu-img (internal snapshot table, content), not only
with our own status. Prints the timings reported in docs/snapshots.md."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.dev.lab.guest import DISK_MARKER, GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.helpers import virsh, wait_for
from tests.lab.vplab import LabCluster, lab_cluster

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def cluster(lab: Lab, guest_image: GuestImage, accel: str, etcd: EmbeddedEtcd,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    yield from lab_cluster(lab, guest_image, tmp_path_factory.mktemp("vp"), etcd, accel)


def hmp(uri: str, domain: str, command: str) -> None:
    """An HMP command that prints nothing when it works (qemu-io's own output goes to QEMU's log)."""
    out = virsh(uri, "qemu-monitor-command", "--hmp", domain, command)
    assert not out.strip(), f"{command}: {out}"


def write_pattern(uri: str, domain: str, byte: int) -> None:
    """64 KiB of ``byte`` at offset 0 of the running guest's first disk, through its QEMU (qemu-io on the
    disk's device: its node is refused, the device holds the write permission), flushed."""
    reply = json.loads(virsh(uri, "qemu-monitor-command", domain, '{"execute":"query-block"}'))
    device = reply["return"][0]["qdev"]
    hmp(uri, domain, f'qemu-io -d {device} "write -P 0x{byte:02x} 0 64k"')
    hmp(uri, domain, f'qemu-io -d {device} "flush"')


def image_snapshots(path: str) -> list[str]:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output", "json", path], capture_output=True,
                                     text=True, check=True).stdout)
    return [s["name"] for s in info.get("snapshots", ())]


def read_byte(path: str) -> bytes:
    """The first byte of a qcow2 image, read from the file (shared: the guest may be running)."""
    out = subprocess.run(["qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -v 0 1", path],
                         capture_output=True, text=True, check=True).stdout
    found = re.search(r"^[0-9a-f]{8}:\s+([0-9a-f]{2})", out, re.MULTILINE)
    assert found is not None, out
    return bytes.fromhex(found.group(1))


def snapshot(name: str, vm: str, memory: bool) -> dict[str, object]:
    return {"apiVersion": "virtplane.io/v1", "kind": "Snapshot", "metadata": {"name": name},
            "spec": {"vm": vm, "memory": memory}}


def test_snapshots_revert_delete_and_clone(cluster: LabCluster) -> None:
    uri = cluster.uri("lab-1")
    started = time.monotonic()
    cluster.apply(cluster.disk("sv-root"), cluster.vm("sv", ["sv-root"]))
    cluster.wait_phase("VirtualMachine", "sv", "Running", timeout=120)
    print(f"\nvm apply -> Running: {time.monotonic() - started:.2f} s")
    path = cluster.status("Disk", "sv-root")["path"]
    cluster.wait_booted("sv")
    write_pattern(uri, "sv", 0xA1)  # the disk as the disk-only snapshot will hold it

    # -- disk-only, live
    started = time.monotonic()
    cluster.apply(snapshot("sv-disk", "sv", memory=False))
    st = cluster.wait_phase("Snapshot", "sv-disk", "Ready", timeout=60)
    print(f"disk-only snapshot apply -> Ready: {time.monotonic() - started:.2f} s")
    assert st["memory"] is False and st["disks"] == ["sv-root"] and st["host"] == "lab-1"
    assert "sv-disk" in virsh(uri, "snapshot-list", "sv", "--name").split()
    assert "sv-disk" in image_snapshots(path)
    assert virsh(uri, "domstate", "sv").strip() == "running"
    write_pattern(uri, "sv", 0xB2)  # the disk moves on after the snapshot

    # -- with memory, live
    started = time.monotonic()
    cluster.apply(snapshot("sv-mem", "sv", memory=True))
    st = cluster.wait_phase("Snapshot", "sv-mem", "Ready", timeout=60)
    print(f"memory snapshot apply -> Ready: {time.monotonic() - started:.2f} s (vm state {st.get('size')} bytes)")
    assert st["memory"] is True and st["size"] and st["size"] > 0
    assert set(virsh(uri, "snapshot-list", "sv", "--name").split()) == {"sv-disk", "sv-mem"}
    assert virsh(uri, "domstate", "sv").strip() == "running"

    # -- clone from the disk-only snapshot, and a VM that boots from it
    started = time.monotonic()
    cluster.apply(cluster.disk("sv-clone", source={"snapshot": {"snapshot": "sv-disk", "disk": "sv-root"}}),
                  cluster.vm("sv-clone-vm", ["sv-clone"]))
    clone = cluster.wait_phase("Disk", "sv-clone", "Ready", timeout=60)
    cluster.wait_phase("VirtualMachine", "sv-clone-vm", "Running", timeout=120)
    print(f"clone from snapshot -> VM Running: {time.monotonic() - started:.2f} s")
    assert clone["format"] == "qcow2" and image_snapshots(clone["path"]) == []
    assert virsh(uri, "domstate", "sv-clone-vm").strip() == "running"
    # The clone holds the disk as it was at the snapshot, not as it is now; its guest reads that too.
    assert read_byte(clone["path"]) == b"\xa1" and read_byte(path) == b"\xb2"
    seen = wait_for("sv-clone-vm reports its disk", lambda: console_disk_bytes(cluster, "sv-clone-vm"), 90)
    assert seen == "a1" * 16, seen

    # -- revert to the memory snapshot: the guest keeps running (resumed from saved RAM)
    done = cluster.vp("snapshot", "revert", "sv-mem", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"revert (memory): {done.stdout.strip()}")
    assert virsh(uri, "domstate", "sv").strip() == "running"

    # -- revert to the disk-only snapshot: the guest boots again from the disk as it was
    dom_id = virsh(uri, "domid", "sv").strip()
    done = cluster.vp("snapshot", "revert", "sv-disk", "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"revert (disk-only): {done.stdout.strip()}")
    assert virsh(uri, "domstate", "sv").strip() == "running"
    assert virsh(uri, "domid", "sv").strip() != dom_id, "a disk-only revert restarts the guest"
    assert read_byte(path) == b"\xa1", "the disk is back as it was at the snapshot"
    assert cluster.status("Snapshot", "sv-disk")["lastRevert"]["phase"] == "Succeeded"

    # -- delete: libvirt snapshot and the image's internal snapshot go, the object goes
    assert cluster.vp("delete", "snapshot", "sv-mem").returncode == 0
    wait_for("sv-mem gone", lambda: not cluster.get("Snapshot", "sv-mem"), 60)
    assert virsh(uri, "snapshot-list", "sv", "--name").split() == ["sv-disk"]
    assert image_snapshots(path) == ["sv-disk"]
    assert cluster.vp("delete", "snapshot", "sv-disk").returncode == 0
    wait_for("sv-disk gone", lambda: not cluster.get("Snapshot", "sv-disk"), 60)
    assert virsh(uri, "snapshot-list", "sv", "--name").split() == []
    assert image_snapshots(path) == []


def qemu_img_info(path: str) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "-U", "--output", "json", path], capture_output=True, text=True,
                         check=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


def console_disk_bytes(cluster: LabCluster, vm: str, host: str = "lab-1") -> str | None:
    """What the guest read from its first disk at boot (hex of 16 bytes), from its serial console."""
    log = cluster.lab.dir / "hosts" / host / "log" / "qemu" / f"{vm}.console.log"
    found = re.search(rf"^{DISK_MARKER} vda ([0-9a-f]+)", log.read_text(errors="replace") if log.exists() else "",
                      re.MULTILINE)
    return found.group(1) if found else None


def test_clones_of_a_disk_overlay_and_copy_boot_vms_that_see_its_content(cluster: LabCluster) -> None:
    uri = cluster.uri("lab-1")
    cluster.apply(cluster.disk("cl-base"))
    base = cluster.wait_phase("Disk", "cl-base", "Ready", timeout=60)["path"]
    # The template's content, written while no VM uses it: 64 KiB of 0x5a at offset 0.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", base], capture_output=True, check=True)

    started = time.monotonic()
    cluster.apply(cluster.disk("cl-overlay", source={"clone": {"disk": "cl-base", "mode": "overlay"}}),
                  cluster.disk("cl-copy", source={"clone": {"disk": "cl-base", "mode": "copy"}}),
                  cluster.vm("cl-ov-vm", ["cl-overlay"]), cluster.vm("cl-cp-vm", ["cl-copy"]))
    overlay = cluster.wait_phase("Disk", "cl-overlay", "Ready", timeout=60)
    copy = cluster.wait_phase("Disk", "cl-copy", "Ready", timeout=60)
    for vm in ("cl-ov-vm", "cl-cp-vm"):
        cluster.wait_phase("VirtualMachine", vm, "Running", timeout=120)
    print(f"\nclones (overlay + copy) of a disk -> both VMs Running: {time.monotonic() - started:.2f} s")

    # qemu-img: the overlay is a thin qcow2 on the base; the copy stands alone.
    ov_info, cp_info = qemu_img_info(overlay["path"]), qemu_img_info(copy["path"])
    assert ov_info["format"] == "qcow2" and ov_info.get("full-backing-filename") == base, ov_info
    assert overlay["backingPath"] == base
    assert cp_info["format"] == "qcow2" and "backing-filename" not in cp_info, cp_info
    assert copy.get("backingPath") is None
    # virsh: each VM runs from its own clone.
    for vm, disk in (("cl-ov-vm", overlay), ("cl-cp-vm", copy)):
        assert virsh(uri, "domstate", vm).strip() == "running"
        assert disk["path"] in virsh(uri, "domblklist", vm)
    # The guests themselves read the template's bytes through each clone.
    for vm in ("cl-ov-vm", "cl-cp-vm"):
        seen = wait_for(f"{vm} reports its disk", lambda vm=vm: console_disk_bytes(cluster, vm), 90)
        assert seen == "5a" * 16, f"{vm} read {seen}"

    # The base stays while an overlay needs it: deleting it waits, saying why; the copy does not hold it.
    assert cluster.vp("delete", "disk", "cl-base").returncode == 0
    held = wait_for("cl-base Deleting", lambda: (s if (s := cluster.status("Disk", "cl-base")).get("phase")
                                                 == "Deleting" else None), 30)
    message = next(c["message"] for c in held["conditions"] if c["type"] == "Ready")
    assert "overlay clone cl-overlay" in message and "cl-copy" not in message, message
    assert Path(base).exists()
    for name in ("vm/cl-ov-vm", "disk/cl-overlay"):
        assert cluster.vp("delete", name).returncode == 0
    wait_for("cl-base deleted (its overlay gone)", lambda: not cluster.get("Disk", "cl-base"), 90)
    assert not Path(base).exists()
    assert virsh(uri, "domstate", "cl-cp-vm").strip() == "running"  # the copy's VM is untouched


def test_revert_of_missing_snapshot_fails_clearly(cluster: LabCluster) -> None:
    done = cluster.vp("snapshot", "revert", "no-such-snapshot", "--timeout", "5")
    assert done.returncode != 0
    assert "not found" in (done.stdout + done.stderr)
