"""Adopting a running foreign guest on a real lab host, through a real `virtplane server` (root, marked lab).

A guest is defined and started with ``virsh`` (not our client): direct kernel boot of the test guest, a
qcow2 disk with cache/discard settings, an IDE cdrom with media and a boot order, an e1000 user-mode NIC with
boot order 1, VNC graphics and a video card (passthrough). Then:

1. the VM controller leaves it alone (no owner stamp) until adopted;
2. ``virtplane adopt host/lab-1 --domain NAME -d DIR`` writes YAML for it; ``virtplane apply -f DIR`` takes it
   over: libvirt's domain id and the QEMU pid stay the same, our owner stamp is in the live and persistent
   XML (``virsh dumpxml``), the VM is Ready, ``virtplane diff -f DIR`` is empty, no InconsistentResult;
3. a second foreign guest using what a spec cannot carry (a serial port on a host TCP socket) is refused
   with the reason and exit 2, and nothing is written for it;
4. a spec that does not reproduce the domain (edited by hand) is refused by the controller
   (AdoptionMismatch) and the domain is not redefined.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from controller.dev.lab.guest import GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.helpers import virsh, wait_for
from tests.lab.vplab import LabCluster, lab_cluster

pytestmark = pytest.mark.lab

HOST = "lab-1"
OWNER_NS = "https://virtplane.io/xmlns/domain/v1"


@pytest.fixture(scope="module")
def cluster(
    lab: Lab, guest_image: GuestImage, accel: str, etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabCluster]:
    yield from lab_cluster(lab, guest_image, tmp_path_factory.mktemp("vp"), etcd, accel)


def _foreign_xml(cluster: LabCluster, name: str, images: Path, domain_type: str, extra: str = "") -> str:
    return f"""<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{cluster.image.kernel}</kernel>
    <initrd>{cluster.image.initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='{images}/{name}-root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{images}/{name}-media.img'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <boot order='2'/>
    </disk>
    <interface type='user'>
      <model type='e1000'/>
      <boot order='1'/>
    </interface>
    <serial type='pty'/>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video><model type='vga'/></video>
    {extra}
  </devices>
</domain>
"""


def _define_and_start(cluster: LabCluster, name: str, images: Path, domain_type: str, extra: str = "") -> None:
    images.mkdir(parents=True, exist_ok=True)
    for image, fmt, size in ((f"{name}-root.qcow2", "qcow2", "64M"), (f"{name}-media.img", "raw", "4M")):
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(images / image), size], check=True)
    xml = images / f"{name}.xml"
    xml.write_text(_foreign_xml(cluster, name, images, domain_type, extra))
    uri = cluster.uri(HOST)
    virsh(uri, "define", str(xml))
    virsh(uri, "start", name)


def _qemu_pid(cluster: LabCluster, name: str) -> int:
    return int((cluster.lab.dir / "hosts" / HOST / "run" / "qemu" / f"{name}.pid").read_text().strip())


def test_a_running_foreign_guest_is_adopted_without_restart(cluster: LabCluster, accel: str, tmp_path: Path) -> None:
    name = "legacy-app"
    uri = cluster.uri(HOST)
    _define_and_start(cluster, name, cluster.lab.dir / "foreign", "kvm" if accel == "kvm" else "qemu")
    domid, pid = virsh(uri, "domid", name).strip(), _qemu_pid(cluster, name)

    # (1) foreign: listed by the server, never stamped
    cluster.wait_reconciles("Host", 2)
    assert OWNER_NS not in virsh(uri, "dumpxml", name)

    # (2) adopt -> YAML -> apply: taken over in place
    repo = tmp_path / "repo"
    done = cluster.vp("adopt", f"host/{HOST}", "--domain", name, "-d", str(repo))
    assert done.returncode == 0, done.stdout + done.stderr
    vm_doc = yaml.safe_load((repo / "virtualmachines" / f"{name}.yaml").read_text())
    spec = vm_doc["spec"]
    assert spec.get("runStrategy", "Always") == "Always" and spec["machine"] == "pc"
    assert [(d["disk"], d.get("device", "disk"), d.get("bootOrder")) for d in spec["disks"]] == [
        (f"{name}-root", "disk", None), (f"{name}-media", "cdrom", 2)]
    assert spec["disks"][0]["cache"] == "none" and spec["disks"][0]["discard"] == "unmap"
    assert spec["nics"][0]["bootOrder"] == 1 and spec["nics"][0]["model"] == "e1000"
    assert any(d.startswith("<graphics") for d in spec["passthrough"]["devices"])
    assert sorted(p.parent.name for p in repo.glob("*/*.yaml")) == [
        "disks", "disks", "networks", "storagedomains", "virtualmachines"]

    applied = cluster.vp("apply", "-f", str(repo))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    status = cluster.wait_phase("VirtualMachine", name, "Running", timeout=120)
    wait_for(f"{name} Ready", lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                          for c in cluster.status("VirtualMachine", name).get("conditions", [])), 60)
    assert status["host"] == HOST
    assert virsh(uri, "domid", name).strip() == domid, "the domain was restarted"
    assert _qemu_pid(cluster, name) == pid, "QEMU was restarted"
    assert OWNER_NS in virsh(uri, "dumpxml", name), "live XML not stamped"
    assert OWNER_NS in virsh(uri, "dumpxml", "--inactive", name), "persistent XML not stamped"
    for kind, disk in (("Disk", f"{name}-root"), ("Disk", f"{name}-media")):
        cluster.wait_phase(kind, disk, "Ready", timeout=60)
    diff = cluster.vp("diff", "-f", str(repo))
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert virsh(uri, "domid", name).strip() == domid and _qemu_pid(cluster, name) == pid
    events = cluster.vp("events", "--for", f"vm/{name}")
    assert "InconsistentResult" not in events.stdout, events.stdout


def test_unrepresentable_guest_is_refused_with_the_reason(cluster: LabCluster, accel: str, tmp_path: Path) -> None:
    name = "legacy-tcp"
    tcp = "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='45123'/><protocol type='raw'/></serial>"
    _define_and_start(cluster, name, cluster.lab.dir / "foreign2", "kvm" if accel == "kvm" else "qemu", tcp)
    repo = tmp_path / "repo"
    done = cluster.vp("adopt", f"host/{HOST}", "--domain", name, "--domain", "no-such-domain", "-d", str(repo))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "domain legacy-tcp cannot be adopted" in done.stderr and "type='tcp'" in done.stderr
    assert "no domain named no-such-domain" in done.stderr
    assert not repo.exists() or not list(repo.rglob("*.yaml"))


def test_a_hand_edited_adoption_spec_leaves_the_domain_alone(cluster: LabCluster, accel: str, tmp_path: Path) -> None:
    name = "legacy-edit"
    uri = cluster.uri(HOST)
    _define_and_start(cluster, name, cluster.lab.dir / "foreign3", "kvm" if accel == "kvm" else "qemu")
    domid = virsh(uri, "domid", name).strip()
    repo = tmp_path / "repo"
    done = cluster.vp("adopt", f"host/{HOST}", "--domain", name, "-d", str(repo))
    assert done.returncode == 0, done.stdout + done.stderr
    path = repo / "virtualmachines" / f"{name}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["memory"]["size"] = "384Mi"
    path.write_text(yaml.safe_dump(doc))
    applied = cluster.vp("apply", "-f", str(repo))
    assert applied.returncode == 0, applied.stdout + applied.stderr

    def mismatch() -> bool:
        conds = cluster.status("VirtualMachine", name).get("conditions", [])
        print(conds)
        return any(c.get("reason") == "AdoptionMismatch" and "memory.size" in c.get("message", "") for c in conds)

    wait_for("AdoptionMismatch", mismatch, 90)
    assert virsh(uri, "domid", name).strip() == domid
    assert OWNER_NS not in virsh(uri, "dumpxml", "--inactive", name)
