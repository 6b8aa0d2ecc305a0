"""Lab hosts against real libvirtd + QEMU: identity, a guest that boots, migrates and hot-plugs,
power-off, and a `lab down` that leaves nothing behind. Root only (see conftest)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
import yaml
from typer.testing import CliRunner

from controller.dev.lab.cli import app
from controller.dev.lab.guest import DEVICES_MARKER, READY_MARKER, GuestImage
from controller.dev.lab.hosts import Lab, LabHost
from specs.kinds import parse_resource
from tests.e2e.helpers import virsh, wait_for

pytestmark = pytest.mark.lab

BOOT_TIMEOUT = 90.0


def guest_xml(name: str, image: GuestImage, accel: str, disk: Path, serial_log: Path) -> str:
    """The test guest: direct kernel boot, virtio disk and NIC, serial console appended to a file."""
    serial = f"<source path='{escape(str(serial_log))}' append='on'/>"
    return f"""<domain type='{"kvm" if accel == "kvm" else "qemu"}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>{escape(image.cmdline)}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{escape(str(disk))}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='file'>{serial}<target port='0'/></serial>
    <console type='file'>{serial}<target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def start_guest(lab: Lab, host: LabHost, name: str, image: GuestImage, accel: str) -> tuple[Path, float]:
    """Define and start the test guest on ``host``; return its serial log and seconds to READY."""
    disk = lab.shared_dir / f"{name}.qcow2"
    log = lab.shared_dir / f"{name}.serial.log"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    xml = lab.shared_dir / f"{name}.xml"
    xml.write_text(guest_xml(name, image, accel, disk, log))
    virsh(host.uri, "define", str(xml))
    started = time.monotonic()
    virsh(host.uri, "start", name)
    wait_for(
        f"{READY_MARKER} in {log}", lambda: log.exists() and READY_MARKER in log.read_text(), BOOT_TIMEOUT
    )
    return log, time.monotonic() - started


def running_names(uri: str) -> set[str]:
    return set(virsh(uri, "list", "--name").split())


def domjobinfo(uri: str, name: str) -> dict[str, str]:
    out = virsh(uri, "domjobinfo", "--completed", name)
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def test_hosts_answer_with_distinct_identities(lab: Lab) -> None:
    hosts = lab.status()
    assert [h.name for h in hosts] == ["lab-1", "lab-2"]
    uuids = []
    for host in hosts:
        assert host.running
        assert "Running hypervisor: QEMU" in virsh(host.uri, "version")
        caps_uuid = re.search(r"<host>\s*<uuid>([0-9a-f-]+)</uuid>", virsh(host.uri, "capabilities"))
        assert caps_uuid is not None
        assert caps_uuid.group(1) == host.host_uuid
        uuids.append(caps_uuid.group(1))
    assert len(set(uuids)) == 2
    assert lab.up(2) == hosts, "up() of running hosts must change nothing"


def test_guest_boots_migrates_and_hotplugs(lab: Lab, guest_image: GuestImage, accel: str) -> None:
    one, two = lab.status()
    log, boot = start_guest(lab, one, "mig1", guest_image, accel)
    print(f"\nguest boot to {READY_MARKER} under {accel}: {boot:.1f} s")
    assert lab.status()[0].qemu_pids, "lab-1 should own the guest's QEMU process"

    started = time.monotonic()
    virsh(one.uri, "migrate", "--live", "--unsafe", "--persistent", "--undefinesource", "mig1", two.uri,
          "--migrateuri", "tcp://127.0.0.1")  # fmt: skip
    elapsed = time.monotonic() - started
    assert "mig1" in running_names(two.uri)
    assert "mig1" not in running_names(one.uri)
    assert "mig1" not in virsh(one.uri, "list", "--all", "--name").split()
    job = domjobinfo(two.uri, "mig1")
    qemu_time, downtime = job.get("Time elapsed"), job.get("Total downtime")
    print(f"migration: virsh {elapsed:.2f} s, QEMU {qemu_time}, downtime {downtime}")
    assert lab.status()[0].qemu_pids == ()

    hot = lab.shared_dir / "mig1-hot.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(hot), "16M"], check=True)
    virsh(two.uri, "attach-disk", "mig1", str(hot), "vdb", "--driver", "qemu", "--subdriver", "qcow2",
          "--targetbus", "virtio", "--live")  # fmt: skip
    wait_for("vdb in the guest", lambda: re.search(rf"{DEVICES_MARKER} block=vda,vdb,", log.read_text()), 30)
    assert "vdb" in virsh(two.uri, "domblklist", "mig1")

    started = time.monotonic()
    virsh(two.uri, "detach-disk", "mig1", "vdb", "--live")
    wait_for("vdb detached", lambda: "vdb" not in virsh(two.uri, "domblklist", "mig1"), 30)
    print(f"disk hot-unplug completed in {time.monotonic() - started:.2f} s")
    assert log.read_text().rstrip().splitlines()[-1].startswith(f"{DEVICES_MARKER} block=vda, ")

    virsh(two.uri, "destroy", "mig1")
    virsh(two.uri, "undefine", "mig1")


def test_power_off_kills_the_host_and_its_guests(lab: Lab, guest_image: GuestImage, accel: str) -> None:
    one = lab.status()[0]
    start_guest(lab, one, "pwr1", guest_image, accel)
    before = lab.status()[0]
    assert before.pid is not None and before.qemu_pids
    lab.power_off("lab-1")
    after = lab.status()
    assert not after[0].running and after[0].pid is None and after[0].qemu_pids == ()
    for pid in (before.pid, *before.qemu_pids):
        assert not _alive(pid), f"pid {pid} of lab-1 survived power-off"
    assert after[1].running, "power-off of lab-1 must not touch lab-2"
    with pytest.raises(AssertionError, match="failed"):
        virsh(one.uri, "version")

    back = lab.power_on("lab-1")
    assert back.running and back.pid != before.pid
    state = virsh(back.uri, "domstate", "pwr1").strip()
    assert state == "shut off", "a guest of a host that lost power is off after power-on"
    virsh(back.uri, "undefine", "pwr1")


def test_cli_up_prints_manifests_and_down_leaves_nothing(
    new_lab: Lab, guest_image: GuestImage, accel: str
) -> None:
    runner = CliRunner()
    lab_dir, caps = str(new_lab.dir), str(new_lab.qemu_caps_dir)
    result = runner.invoke(
        app, ["up", "-n", "2", "--dir", lab_dir, "--cluster", "east", "--qemu-caps-dir", caps]
    )
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.stdout))
    hosts = new_lab.status()
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Host", "lab-1"), ("Host", "lab-2"), ("StorageDomain", "lab-shared"),
    ]  # fmt: skip
    assert docs[0]["spec"] == {"cluster": "east", "uri": hosts[0].uri, "powerManagement": {"agent": "lab"}}
    assert docs[2]["spec"]["posix"]["path"] == str(new_lab.shared_dir)
    assert docs[2]["spec"]["shared"] is True
    _validate_with_specs(docs)

    start_guest(new_lab, hosts[0], "down1", guest_image, accel)
    recorded = [p for h in new_lab.status() for p in (h.pid, *h.qemu_pids) if p is not None]
    assert len(recorded) == 3
    namespaces = {_mount_ns(p) for p in recorded}

    status = runner.invoke(app, ["status", "--dir", str(new_lab.dir)])
    assert status.exit_code == 0 and "lab-1    running" in status.output

    result = runner.invoke(app, ["down", "--dir", str(new_lab.dir)])
    assert result.exit_code == 0, result.output
    assert [p for p in recorded if _alive(p)] == []
    assert str(new_lab.dir) not in Path("/proc/mounts").read_text()
    leftovers = [
        p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _mount_ns(int(p.name)) in namespaces
    ]
    assert leftovers == [], "processes left in the hosts' mount namespaces"
    assert all(not h.running for h in new_lab.status())


def _validate_with_specs(docs: list[dict[str, object]]) -> None:
    for doc in docs:
        parse_resource(doc)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _mount_ns(pid: int) -> str | None:
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
