"""A real QEMU host end to end: `virtplane lab` libvirtd hosts, the test guest (direct kernel boot), a
StorageDomain on the lab's shared directory, a Disk — applied through the CLI to a real server with
controllers, and checked with `virsh`, a libvirt client that is not ours. Root only (skipped otherwise).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.dev.lab.guest import POWEROFF_MARKER, READY_MARKER, GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.helpers import (
    Cli,
    Servers,
    cluster_doc,
    guest_vm_doc,
    host_doc,
    is_ready,
    lab_accel,
    lab_guest_image,
    manifest,
    running_lab,
    virsh,
    virsh_names,
    virsh_state,
    wait_for,
    write,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("lab"), 2) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def guest_image(lab: Lab) -> GuestImage:
    return lab_guest_image()  # type: ignore[no-any-return]

NS = "https://virtplane.io/xmlns/domain/v1"
CLUSTER = "qlab"
READY_S = 60.0  # define + start under TCG is ~1 s; the first connection may probe QEMU (~8 s)


@pytest.fixture(scope="module")
def servers(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    etcd = EmbeddedEtcd(tmp_path_factory.mktemp("qlab-etcd"))
    etcd.start()
    running = Servers(tmp_path_factory.mktemp("qlab-servers"), etcd)
    try:
        running.start("a")
        yield running
    finally:
        try:
            running.stop_all()
        finally:
            etcd.stop()


@pytest.fixture
def cli(servers: Servers) -> Cli:
    return Cli(servers.current["a"])


def infra(lab: Lab) -> list[dict[str, Any]]:
    accel = lab_accel(lab_guest_image())
    hosts = [host_doc(h.name, CLUSTER, h.uri) for h in lab.status()]
    for doc in hosts:  # the guest runs under what the probe found (TCG where /dev/kvm cannot run it)
        doc["metadata"]["annotations"] = {"virtplane.io/accelerator": accel}
    return [
        cluster_doc(CLUSTER),
        *hosts,
        {"apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": "labshared"},
         "spec": {"cluster": CLUSTER, "type": "posix", "posix": {"path": str(lab.shared_dir)}, "shared": True}},
        {"apiVersion": "virtplane.io/v1", "kind": "Network", "metadata": {"name": "usernet"},
         "spec": {"cluster": CLUSTER, "type": "user"}},
    ]


def disk_doc(name: str, size: str = "64Mi") -> dict[str, Any]:
    return {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": name},
            "spec": {"storageDomain": "labshared", "size": size}}


def guest_with_disk(name: str, image: GuestImage, **spec: Any) -> list[dict[str, Any]]:
    return [disk_doc(f"{name}-data"),
            guest_vm_doc(name, CLUSTER, image, disks=[{"disk": f"{name}-data"}],
                         nics=[{"name": "eth0", "network": "usernet"}], **spec)]


def uri_of(lab: Lab, host: str) -> str:
    return lab.host(host).uri


def domid(uri: str, name: str) -> str:
    return virsh(uri, "domid", name).strip()


def owner_metadata(uri: str, name: str) -> dict[str, str]:
    root = ET.fromstring(virsh(uri, "dumpxml", name))
    owner = root.find(f"metadata/{{{NS}}}owner")
    assert owner is not None, f"no <owner> in namespace {NS} in the domain XML of {name}"
    return {child.tag.split("}", 1)[1]: child.text or "" for child in owner}


def test_vm_with_disk_runs_on_real_qemu_with_our_metadata(cli: Cli, lab: Lab, guest_image: GuestImage,
                                                          tmp_path: Path) -> None:
    docs = [*infra(lab), *guest_with_disk("q-create", guest_image, placement={"allowedHosts": ["lab-1"]})]
    cli.apply(write(tmp_path / "m.yaml", manifest(*docs)), correlation_id="qlab-create-1")
    cli.wait_ready(["q-create"], READY_S)
    uri = uri_of(lab, "lab-1")

    assert "q-create" in virsh_names(uri, all_=False), virsh(uri, "list", "--all")
    assert virsh_state(uri, "q-create") == "running"
    vm = cli.obj("vm", "q-create")
    assert vm is not None and vm["status"]["host"] == "lab-1"
    owner = owner_metadata(uri, "q-create")
    assert owner["correlationId"] == "qlab-create-1", owner
    assert owner["uid"] == vm["metadata"]["uid"] and owner["name"] == "q-create", owner
    # The guest boots our kernel directly, from the disk we declared in the shared directory.
    xml = virsh(uri, "dumpxml", "q-create")
    root = ET.fromstring(xml)
    assert root.findtext("os/kernel") == str(guest_image.kernel)
    sources = [s.get("file") for s in root.findall("devices/disk/source")]
    disk = cli.obj("disk", "q-create-data")
    assert disk is not None and disk["status"]["phase"] == "Ready"
    assert disk["status"]["path"] in sources and Path(disk["status"]["path"]).is_file(), (sources, disk["status"])
    assert Path(disk["status"]["path"]).parent == lab.shared_dir
    # virsh sees the volume in the pool the StorageDomain made.
    assert "q-create-data" in virsh(uri, "vol-list", "vp-labshared")


@pytest.mark.parametrize("how", ["destroy", "undefine"])
def test_virsh_behind_our_back_is_corrected(cli: Cli, lab: Lab, guest_image: GuestImage,
                                            tmp_path: Path, how: str) -> None:
    name = f"q-{how}"
    cli.apply(write(tmp_path / "m.yaml", manifest(*infra(lab), *guest_with_disk(
        name, guest_image, placement={"allowedHosts": ["lab-1"]}))))
    cli.wait_ready([name], READY_S)
    uri = uri_of(lab, "lab-1")
    first = domid(uri, name)
    if how == "undefine":
        virsh(uri, "undefine", name)  # now transient; the destroy below makes it vanish entirely
    virsh(uri, "destroy", name)
    started = time.monotonic()
    wait_for(f"{name} running again (virsh)", lambda: virsh_state(uri, name) == "running"
             and domid(uri, name) != first, 30, interval=0.2)
    print(f"\n{how}: running again {time.monotonic() - started:.1f} s after virsh")
    persistent = virsh(uri, "dominfo", name).split("Persistent:", 1)[1].split()[0]
    assert persistent == "yes", "the corrected domain must be defined again, not left transient"
    wait_for(f"{name} Ready", lambda: is_ready(cli.obj("vm", name)), READY_S)
    assert virsh_names(uri).count(name) == 1
    assert owner_metadata(uri, name)["uid"] == cli.obj("vm", name)["metadata"]["uid"]  # type: ignore[index]


def test_virsh_destroy_is_reported_as_a_drift_event(cli: Cli, lab: Lab, guest_image: GuestImage,
                                                    tmp_path: Path) -> None:
    name = "q-event"
    cli.apply(write(tmp_path / "m.yaml", manifest(*infra(lab), *guest_with_disk(
        name, guest_image, placement={"allowedHosts": ["lab-1"]}))))
    cli.wait_ready([name], READY_S)
    virsh(uri_of(lab, "lab-1"), "destroy", name)
    wait_for("a drift event", lambda: any("drift" in (e["reason"] + " " + e["message"]).lower()
                                          for e in cli.events(for_ref=f"vm/{name}")), 10, interval=0.2)


def test_delete_removes_the_domain(cli: Cli, lab: Lab, guest_image: GuestImage, tmp_path: Path) -> None:
    cli.apply(write(tmp_path / "m.yaml", manifest(*infra(lab), *guest_with_disk(
        "q-delete", guest_image, placement={"allowedHosts": ["lab-1"]}))))
    cli.wait_ready(["q-delete"], READY_S)
    uri = uri_of(lab, "lab-1")
    assert "q-delete" in virsh_names(uri)
    console = lab.dir / "hosts" / "lab-1" / "log" / "qemu" / "q-delete.console.log"
    wait_for("the guest booted", lambda: READY_MARKER in console.read_text(errors="replace"), READY_S)
    started = time.monotonic()
    cli.ok("delete", "vm/q-delete")
    cli.ok("wait", "vm/q-delete", "--for", "delete", "--timeout", "90", timeout=120)
    took = time.monotonic() - started
    for h in lab.status():
        assert "q-delete" not in virsh_names(h.uri), virsh(h.uri, "list", "--all")
    # A graceful stop: the guest saw the ACPI power button and powered itself off (no destroy after 60 s).
    assert POWEROFF_MARKER in console.read_text(errors="replace")
    assert took < 30, f"delete took {took:.1f} s"


def test_default_cpu_model_converges_without_inconsistent_result(cli: Cli, lab: Lab,
                                                                 guest_image: GuestImage, tmp_path: Path) -> None:
    """libvirt 9 writes its default CPU model (qemu64) into the persistent XML when the domain starts; with
    no cpu.model in the spec that must not re-plan a DefineDomain forever (InconsistentResult hot loop)."""
    doc = guest_vm_doc("q-nomodel", CLUSTER, guest_image, placement={"allowedHosts": ["lab-1"]})
    cli.apply(write(tmp_path / "m.yaml", manifest(*infra(lab), doc)), correlation_id="qlab-nomodel")
    wait_for("q-nomodel Ready", lambda: is_ready(cli.obj("vm", "q-nomodel")), READY_S, interval=0.5)
    uri = uri_of(lab, "lab-1")
    wait_for("libvirt's default model in the persistent XML", lambda: "<model" in virsh(
        uri, "dumpxml", "--inactive", "q-nomodel"), 10, interval=0.2)
    events = cli.events(correlation_id="qlab-nomodel")
    bad = [e for e in events if e["reason"] in ("InconsistentResult", "ActionFailed")]
    assert not bad, f"{len(bad)} bad events, first: {bad[0]['message']}"
    plans = [e for e in events if e["reason"] == "PlanExecuted" and e["involvedObject"]["name"] == "q-nomodel"]
    assert len(plans) == 1, [e["message"] for e in plans]  # one define + start, nothing re-planned


def _ready_in_etcd(servers: Servers, names: list[str]) -> list[str]:
    """VMs whose stored status says Ready=True (read with etcdctl: the API server is down)."""
    import json

    from tests.e2e.conftest import etcdctl_run

    ready = []
    for n in names:
        raw = etcdctl_run(servers.etcd.endpoint, "get", f"/virtplane/status/VirtualMachine/{n}", "--print-value-only")
        if raw.strip() and is_ready({"status": json.loads(raw)}):
            ready.append(n)
    return ready


# Not strict: the bug is a race in the restarted server (VM reconciles vs. the first listing of each host),
# so the test fails in some runs only (1 duplicate run of 3 here). Remove the marker with the fix.
def test_server_killed_mid_reconcile_no_duplicates_nothing_lost(servers: Servers, lab: Lab,
                                                                guest_image: GuestImage, tmp_path: Path) -> None:
    cli = Cli(servers.current["a"])
    names = [f"q-restart-{i}" for i in range(6)]
    docs = [*infra(lab), *(guest_vm_doc(n, CLUSTER, guest_image) for n in names)]
    uris = [h.uri for h in lab.status()]

    def ours() -> list[str]:
        return [n for uri in uris for n in virsh_names(uri) if n.startswith("q-restart-")]

    # libvirtd writes a persistent domain's XML under the host's /etc/libvirt/qemu at define: watching those
    # files (microseconds) catches the first define; virsh (~0.1 s a call) would see all of them at once.
    config_dirs = [lab.dir / "hosts" / h.name / "etc" / "qemu" for h in lab.status()]

    def first_define() -> bool:
        return any(p.name.startswith("q-restart-") for d in config_dirs if d.is_dir() for p in d.glob("*.xml"))

    cli.apply(write(tmp_path / "m.yaml", manifest(*docs)), correlation_id="qlab-restart")
    wait_for("the first domain defined", first_define, 60, interval=0.001)
    servers.kill("a")
    states = {n: virsh_state(h.uri, n) for h in lab.status() for n in virsh_names(h.uri) if n.startswith("q-restart-")}
    ready_at_kill = _ready_in_etcd(servers, names)
    print(f"\nSIGKILL at the first define: libvirt had {states}; Ready in etcd: {ready_at_kill}")
    assert len(ready_at_kill) < len(names), "killed too late: every VM was already Ready"

    restarted = servers.start("a")
    cli = Cli(restarted)
    started = time.monotonic()
    # A new process campaigns with a new identity: it leads once the dead one's lease expires (TTL 10 s).
    cli.wait_ready(names, READY_S)
    print(f"all {len(names)} Ready {time.monotonic() - started:.1f} s after the restart")
    seen = ours()
    counts = Counter(seen)
    assert sorted(counts) == sorted(names) and all(c == 1 for c in counts.values()), counts
    for uri in uris:
        per_host = virsh_names(uri)
        assert len(per_host) == len(set(per_host)), per_host
    for n in names:
        vm = cli.obj("vm", n)
        assert vm is not None
        host_uri = uri_of(lab, vm["status"]["host"])
        assert virsh_state(host_uri, n) == "running", (n, vm["status"]["host"])
        assert owner_metadata(host_uri, n)["uid"] == vm["metadata"]["uid"]

