"""Shared storage served by a real `virtplane server` on lab hosts, against the lab's real storage servers
(nfs-ganesha, glusterd, tgtd): StorageDomains of type nfs (QEMU's libnfs) and gluster (netfs pool, FUSE
mount in each host's namespace), and an iSCSI LUN Disk with CHAP by reference.

For each: status (capacity, available, per-host reachability), a VM that boots from it, a second disk of the
same domain hot-plugged, a disk grown live (blockresize), and a live migration lab-1 <-> lab-2 — checked
with virsh and with the storage servers' own view (the files in the export / brick, tgtadm). Bad input
(wrong export, a volume that does not exist, wrong CHAP password, wrong IQN) is a clear condition and an
event, never Ready. Root only, marked lab; a backend whose packages are missing is skipped, naming them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.dev.lab.guest import DEVICES_MARKER, GuestImage
from controller.dev.lab.hosts import Lab
from controller.dev.lab.storage import GlusterServer, IscsiServer, LabStorage, NfsServer, procs, storage_manifests
from controller.dev.lab.storage.manifests import install_chap_secret
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.helpers import virsh, wait_for
from tests.lab.test_storage_servers import missing
from tests.lab.vplab import CLUSTER, LabCluster, lab_cluster

pytestmark = pytest.mark.lab
API = "virtplane.io/v1"


@pytest.fixture(scope="module")
def servers(lab: Lab) -> Iterator[dict[str, Any]]:
    storage = LabStorage(lab.dir)
    kinds = [k for k in ("nfs", "gluster", "iscsi") if missing(k) is None]
    try:
        yield {s.kind: s for s in storage.up(kinds)}
    finally:
        lab.down()  # clients first: QEMUs and FUSE mounts live in the hosts' namespaces
        pids = [p for s in storage.status() for p in s.pids]
        storage.down()
        assert [p for p in pids if procs.alive(p)] == [], "storage servers survived down()"


@pytest.fixture(scope="module")
def cluster(lab: Lab, servers: dict[str, Any], guest_image: GuestImage, accel: str, etcd: EmbeddedEtcd,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    secrets = tmp_path_factory.mktemp("secrets")
    if "iscsi" in servers:
        install_chap_secret(servers["iscsi"], secrets)
        shutil.copy(secrets / "lab-iscsi-chap", secrets / "wrong-chap")
        (secrets / "wrong-chap").write_text("not-the-password\n")
    extra = ["--secrets-dir", str(secrets)]
    if "gluster" in servers:  # GlusterVolumes are managed through the lab glusterd's CLI socket
        extra += ["--glusterd-socket", str(LabStorage(lab.dir).backend("gluster").socket)]  # type: ignore[union-attr]
    yield from lab_cluster(lab, guest_image, tmp_path_factory.mktemp("vp"), etcd, accel, *extra)


def server(servers: dict[str, Any], kind: str) -> Any:
    if kind not in servers:
        pytest.skip(missing(kind) or f"{kind} server not started")
    return servers[kind]


def disk(name: str, domain: str, size: str = "64Mi") -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Disk", "metadata": {"name": name},
            "spec": {"storageDomain": domain, "format": "qcow2", "size": size}}


def vm(cluster: LabCluster, name: str, disks: list[str]) -> dict[str, Any]:
    doc = cluster.vm(name, disks)
    doc["spec"]["placement"] = {"allowedHosts": ["lab-1", "lab-2"]}
    return doc


def host_of(cluster: LabCluster, name: str) -> str:
    host = cluster.status("VirtualMachine", name).get("host")
    assert host in ("lab-1", "lab-2"), cluster.status("VirtualMachine", name)
    return str(host)


def blk_capacity(uri: str, domain: str, target: str) -> int:
    info = virsh(uri, "domblkinfo", domain, target)
    found = re.search(r"^Capacity:\s+(\d+)", info, re.M)
    assert found is not None, info
    return int(found.group(1))


def events(cluster: LabCluster, kind: str, name: str) -> str:
    done = cluster.vp("events", "--for", f"{kind.lower()}/{name}")
    return done.stdout + done.stderr


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status.get("conditions", ()) if c["type"] == "Ready")


def exercise_vm(cluster: LabCluster, vm_name: str, root: str, extra: dict[str, Any], check_extra: Any,
                check_snapshot: Any) -> None:
    """Boot ``vm_name`` from ``root``; hot-plug ``extra`` (a Disk doc of the same domain); grow it live; migrate
    the VM to the other host; the guest keeps both disks and the grown size; take a snapshot with memory,
    revert to it, delete it (``check_snapshot(name, present)`` looks at the image on the server)."""
    started = time.monotonic()
    cluster.apply(vm(cluster, vm_name, [root]))
    cluster.wait_phase("VirtualMachine", vm_name, "Running", timeout=180)
    first = host_of(cluster, vm_name)
    cluster.wait_booted(vm_name, first, timeout=120)
    print(f"\n{vm_name}: apply -> booted on {first} in {time.monotonic() - started:.1f} s")
    uri = cluster.uri(first)
    assert virsh(uri, "domstate", vm_name).strip() == "running"

    # hot-plug a second disk of the same domain
    cluster.apply(extra)
    cluster.wait_phase("Disk", extra["metadata"]["name"], "Ready", timeout=60)
    check_extra(cluster.status("Disk", extra["metadata"]["name"]))
    cluster.apply(vm(cluster, vm_name, [root, extra["metadata"]["name"]]))
    wait_for("vdb in the guest", lambda: f"{DEVICES_MARKER} block=vda,vdb," in cluster.console(vm_name, first), 60)
    assert "vdb" in virsh(uri, "domblklist", vm_name)

    # grow it live: diff says [live], the guest's QEMU sees the new size, the status too
    grown = {**extra, "spec": {**extra["spec"], "size": "96Mi"}}
    diff = cluster.vp("diff", "-f", "-", input=_yaml(grown))
    assert "ResizeVolume" in diff.stdout and "[live]" in diff.stdout and "blockresize" in diff.stdout, diff.stdout
    cluster.apply(grown)
    wait_for("vdb grown in QEMU", lambda: blk_capacity(uri, vm_name, "vdb") == 96 << 20, 60)
    wait_for("Disk status grown", lambda: cluster.status("Disk", extra["metadata"]["name"]).get("capacity")
             == 96 << 20, 60)

    # live migration to the other host, through a Migration request
    other = "lab-2" if first == "lab-1" else "lab-1"
    started = time.monotonic()
    done = cluster.vp("migrate", f"vm/{vm_name}", "--to", other, "--wait", "--timeout", "180")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"{vm_name}: migration {first} -> {other}: {time.monotonic() - started:.1f} s")
    assert vm_name in virsh(cluster.uri(other), "list", "--name").split()
    assert vm_name not in virsh(cluster.uri(first), "list", "--all", "--name").split()
    assert host_of(cluster, vm_name) == other
    assert blk_capacity(cluster.uri(other), vm_name, "vdb") == 96 << 20

    # snapshot with memory (internal, inside the qcow2 on the storage server), revert, delete
    snap = f"{vm_name}-s1"
    cluster.apply({"apiVersion": API, "kind": "Snapshot", "metadata": {"name": snap},
                   "spec": {"vm": vm_name, "memory": True}})
    st = cluster.wait_phase("Snapshot", snap, "Ready", timeout=120)
    assert st["host"] == other and snap in virsh(cluster.uri(other), "snapshot-list", vm_name, "--name").split()
    check_snapshot(snap, True)
    done = cluster.vp("snapshot", "revert", snap, "--timeout", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert virsh(cluster.uri(other), "domstate", vm_name).strip() == "running"
    assert cluster.vp("delete", "snapshot", snap).returncode == 0
    wait_for(f"{snap} gone", lambda: not cluster.get("Snapshot", snap), 60)
    check_snapshot(snap, False)


def _yaml(*docs: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump_all(docs, sort_keys=False)


def domain_manifest(servers: dict[str, Any], kind: str) -> dict[str, Any]:
    [doc] = storage_manifests([servers[kind]], CLUSTER)
    return doc


def assert_domain_ready(cluster: LabCluster, name: str) -> dict[str, Any]:
    st = cluster.wait_phase("StorageDomain", name, "Ready", timeout=120)
    assert st["readyHosts"] == ["lab-1", "lab-2"] and st["failedHosts"] == []
    assert st["capacity"] > 0 and 0 < st["available"] <= st["capacity"], st
    assert [(h["host"], h["reachable"]) for h in st["hosts"]] == [("lab-1", True), ("lab-2", True)]
    return st


# ---------------------------------------------------------------- NFS


def test_nfs_domain_serves_vms_over_libnfs(cluster: LabCluster, servers: dict[str, Any]) -> None:
    nfs: NfsServer = server(servers, "nfs")
    cluster.apply(domain_manifest(servers, "nfs"))
    st = assert_domain_ready(cluster, "lab-nfs")
    assert st["hosts"][0]["reason"] == "ServerReachable"
    cluster.apply(disk("nfs-root", "lab-nfs"))
    root = cluster.wait_phase("Disk", "nfs-root", "Ready", timeout=60)
    assert root["path"] == nfs.url("nfs-root.qcow2") and root["capacity"] == 64 << 20
    # the server's own view: the file is in the exported directory, and the export is listed
    assert (nfs.export / "nfs-root.qcow2").is_file()
    assert f"{nfs.export} (everyone)" in procs.run(["showmount", "-e", nfs.address]).stdout

    def on_server(status: dict[str, Any]) -> None:
        assert (nfs.export / "nfs-data.qcow2").is_file() and status["path"].startswith("nfs://")

    def snapshot_on_server(name: str, present: bool) -> None:
        listed = subprocess.run(["qemu-img", "snapshot", "-U", "-l", nfs.url("nfs-root.qcow2")],
                                capture_output=True, text=True, check=True).stdout
        assert (re.search(rf"\s{re.escape(name)}\s", listed) is not None) == present, listed

    exercise_vm(cluster, "nfs-vm", "nfs-root", disk("nfs-data", "lab-nfs", "32Mi"), on_server, snapshot_on_server)
    dumped = virsh(cluster.uri(host_of(cluster, "nfs-vm")), "dumpxml", "nfs-vm")
    assert re.search(rf"<source protocol='nfs' name='{re.escape(str(nfs.export))}/nfs-root.qcow2'[ >]", dumped), dumped


def test_nfs_domain_with_a_wrong_export_is_unavailable_with_the_reason(cluster: LabCluster,
                                                                       servers: dict[str, Any]) -> None:
    server(servers, "nfs")
    bad = domain_manifest(servers, "nfs")
    bad["metadata"]["name"] = "nfs-wrong"
    bad["spec"]["nfs"]["export"] = "/no/such/export"
    cluster.apply(bad, disk("nfs-wrong-d", "nfs-wrong"))
    st = cluster.wait_phase("StorageDomain", "nfs-wrong", "Unavailable", timeout=60)
    assert {h["reason"] for h in st["hosts"]} == {"ServerUnreachable"}, st
    assert "/no/such/export" in ready_condition(st)["message"] and "MNT3ERR" in ready_condition(st)["message"]
    assert "ServerUnreachable" in events(cluster, "StorageDomain", "nfs-wrong")
    assert cluster.status("Disk", "nfs-wrong-d").get("phase") == "Pending"


# ---------------------------------------------------------------- GlusterFS


def test_gluster_domain_mounts_on_each_host_and_serves_vms(cluster: LabCluster, servers: dict[str, Any]) -> None:
    gl: GlusterServer = server(servers, "gluster")
    cluster.apply(domain_manifest(servers, "gluster"))
    assert_domain_ready(cluster, "lab-gluster")
    for name in ("lab-1", "lab-2"):  # mounted by each host's libvirtd, in its namespace only
        pid = cluster.lab.host(name).pid
        mounts = Path(f"/proc/{pid}/mounts").read_text()
        assert f"{gl.host}:/{gl.volume} {gl.mount_path} fuse.glusterfs" in mounts
        assert re.search(r"^State:\s+running", virsh(cluster.uri(name), "pool-info", "vp-lab-gluster"), re.M)
    cluster.apply(disk("gl-root", "lab-gluster"))
    root = cluster.wait_phase("Disk", "gl-root", "Ready", timeout=60)
    assert root["path"] == f"{gl.mount_path}/gl-root.qcow2"
    # the server's own view: the image is on a brick
    assert any((brick / "gl-root.qcow2").is_file() for brick in gl.bricks), gl.bricks
    status = LabStorage(cluster.lab.dir).backend("gluster").cli("volume", "status", gl.volume).stdout  # type: ignore[union-attr]
    assert re.search(r"^Brick ", status, re.M), status

    def on_brick(_: dict[str, Any]) -> None:
        assert any((brick / "gl-data.qcow2").is_file() for brick in gl.bricks)

    def snapshot_on_brick(name: str, present: bool) -> None:
        [image] = [b / "gl-root.qcow2" for b in gl.bricks if (b / "gl-root.qcow2").is_file()]
        listed = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(image)], capture_output=True, text=True,
                                check=True).stdout
        assert (re.search(rf"\s{re.escape(name)}\s", listed) is not None) == present, listed

    exercise_vm(cluster, "gl-vm", "gl-root", disk("gl-data", "lab-gluster", "32Mi"), on_brick, snapshot_on_brick)


def test_gluster_domain_of_a_missing_volume_fails_to_mount_with_the_reason(cluster: LabCluster,
                                                                           servers: dict[str, Any]) -> None:
    server(servers, "gluster")
    bad = domain_manifest(servers, "gluster")
    bad["metadata"]["name"] = "gl-wrong"
    bad["spec"]["gluster"]["volume"] = "novolume"
    bad["spec"]["gluster"]["mountPath"] = str(cluster.lab.dir / "gl-wrong-mnt")
    cluster.apply(bad)
    st = cluster.wait_phase("StorageDomain", "gl-wrong", "Unavailable", timeout=120)
    assert {h["reason"] for h in st["hosts"]} == {"MountFailed"}, st
    assert "MountFailed" in events(cluster, "StorageDomain", "gl-wrong")
    # a VM on it is not placed, and says why per host
    cluster.apply(disk("gl-wrong-d", "gl-wrong"))
    assert cluster.status("Disk", "gl-wrong-d").get("phase") != "Ready"


# ---------------------------------------------------------------- iSCSI


def lun_disk(servers: dict[str, Any], name: str, **iscsi: Any) -> dict[str, Any]:
    [doc] = storage_manifests([servers["iscsi"]], CLUSTER)
    doc["metadata"]["name"] = name
    doc["spec"]["lun"]["iscsi"].update(iscsi)
    return doc


def test_iscsi_lun_with_chap_by_reference_serves_a_vm(cluster: LabCluster, servers: dict[str, Any]) -> None:
    target: IscsiServer = server(servers, "iscsi")
    cluster.apply(lun_disk(servers, "lun1"))
    st = cluster.wait_phase("Disk", "lun1", "Ready", timeout=60)
    assert st["capacity"] == target.lun_size and st["path"] == f"iscsi://{target.portal}/{target.iqn}/{target.lun}"
    password = target.secret_file.read_text().strip()
    everything = cluster.vp("get", "disk", "lun1", "-o", "json").stdout + events(cluster, "Disk", "lun1")
    assert password not in everything, "the CHAP password must never reach status or events"
    for name in ("lab-1", "lab-2"):  # the libvirt secret is on every host, its value not readable
        listed = virsh(cluster.uri(name), "secret-list")
        assert "virtplane-chap-lab-iscsi-chap" in listed, listed
    cluster.apply(vm(cluster, "lun-vm", ["lun1"]))
    cluster.wait_phase("VirtualMachine", "lun-vm", "Running", timeout=180)
    first = host_of(cluster, "lun-vm")
    cluster.wait_booted("lun-vm", first, timeout=120)
    dumped = virsh(cluster.uri(first), "dumpxml", "lun-vm")
    assert "<auth username='vplab'>" in dumped and password not in dumped
    # the target's own view: a session is logged in from QEMU
    shown = procs.run(["tgtadm", "-C", str(target.control_port), "--lld", "iscsi", "--op", "show",
                       "--mode", "target"]).stdout
    assert re.search(r"I_T nexus: \d+", shown), shown
    other = "lab-2" if first == "lab-1" else "lab-1"
    done = cluster.vp("migrate", "vm/lun-vm", "--to", other, "--wait", "--timeout", "180")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lun-vm" in virsh(cluster.uri(other), "list", "--name").split()


@pytest.mark.parametrize(("change", "reason"), [
    ({"chapSecret": "wrong-chap"}, "LoginFailed"),
    ({"iqn": "iqn.2024-01.io.virtplane:nothere"}, "TargetNotFound"),
    ({"lun": 9}, "LunNotFound"),
    ({"portal": "127.0.0.1:13999"}, "PortalUnreachable"),
    ({"chapSecret": "no-such-secret"}, "SecretInvalid"),
])
def test_iscsi_lun_bad_input_is_a_clear_condition(cluster: LabCluster, servers: dict[str, Any],
                                                  change: dict[str, Any], reason: str) -> None:
    server(servers, "iscsi")
    name = f"lun-bad-{reason.lower()}"
    cluster.apply(lun_disk(servers, name, **change))
    st = cluster.wait_phase("Disk", name, "Failed", timeout=60)
    cond = ready_condition(st)
    assert cond["status"] is False or cond["status"] == "False", cond
    assert cond["reason"] == reason, cond
    assert reason in events(cluster, "Disk", name)
    # a VM using it waits for its disk: reconciled, never defined or started on any host
    cluster.apply(vm(cluster, f"vm-{name}", [name]))
    vm_status = wait_for(f"vm-{name} reconciled", lambda: s if (s := cluster.status(
        "VirtualMachine", f"vm-{name}")).get("observedGeneration") else None, 60)
    assert vm_status.get("phase") != "Running", vm_status
    for host in ("lab-1", "lab-2"):
        assert f"vm-{name}" not in virsh(cluster.uri(host), "list", "--all", "--name").split()


# ---------------------------------------------------------------- Gluster volume management


def gluster_volume(name: str, gl: GlusterServer, bricks: list[Path], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "GlusterVolume", "metadata": {"name": name},
            "spec": {"cluster": CLUSTER, "bricks": [{"host": gl.host, "path": str(b)} for b in bricks],
                     "force": True, **spec}}


def test_gluster_volume_is_created_expanded_and_deleted_only_when_unused(cluster: LabCluster,
                                                                         servers: dict[str, Any]) -> None:
    gl: GlusterServer = server(servers, "gluster")
    backend = LabStorage(cluster.lab.dir).backend("gluster")
    bricks = [cluster.lab.dir / "gv-bricks" / f"b{i}" for i in range(1, 5)]
    bricks[0].parent.mkdir(exist_ok=True)  # glusterd creates the brick directory, not its parents
    try:
        started = time.monotonic()
        cluster.apply(gluster_volume("vpgv", gl, bricks[:2], replica=2,
                                     options={"performance.cache-size": "32MB"}))
        st = cluster.wait_phase("GlusterVolume", "vpgv", "Started", timeout=120)
        print(f"\nGlusterVolume create+start: {time.monotonic() - started:.1f} s")
        assert st["type"] == "Replicate" and [b["online"] for b in st["bricks"]] == [True, True], st
        assert st["options"] == {"performance.cache-size": "32MB"}
        info = backend.cli("volume", "info", "vpgv").stdout  # type: ignore[union-attr]
        assert "Status: Started" in info and "Number of Bricks: 1 x 2 = 2" in info, info
        assert "performance.cache-size: 32MB" in info

        # expand by one replica set: diff shows it, then the volume grows
        grown = gluster_volume("vpgv", gl, bricks, replica=2, options={"performance.cache-size": "32MB"})
        diff = cluster.vp("diff", "-f", "-", input=_yaml(grown))
        assert "AddGlusterBricks" in diff.stdout and str(bricks[3]) in diff.stdout, diff.stdout
        cluster.apply(grown)
        wait_for("4 bricks online", lambda: len([b for b in cluster.status("GlusterVolume", "vpgv").get("bricks", ())
                                                  if b["online"]]) == 4, 120)
        info = backend.cli("volume", "info", "vpgv").stdout  # type: ignore[union-attr]
        assert "Number of Bricks: 2 x 2 = 4" in info and "Distributed-Replicate" in info, info

        # removing a brick from the spec is refused, the volume untouched
        cluster.apply(gluster_volume("vpgv", gl, bricks[:2], replica=2,
                                     options={"performance.cache-size": "32MB"}))
        wait_for("refusal", lambda: "removing bricks" in ready_condition(
            cluster.status("GlusterVolume", "vpgv")).get("message", ""), 60)
        assert "Number of Bricks: 2 x 2 = 4" in backend.cli("volume", "info", "vpgv").stdout  # type: ignore[union-attr]
        cluster.apply(grown)

        # a domain uses it: deleting the volume waits, and says why
        domain = {"apiVersion": API, "kind": "StorageDomain", "metadata": {"name": "gv-domain"},
                  "spec": {"cluster": CLUSTER, "type": "gluster", "gluster": {
                      "servers": [gl.host], "volume": "vpgv", "mountPath": str(cluster.lab.dir / "gv-mnt")}}}
        cluster.apply(domain)
        cluster.wait_phase("StorageDomain", "gv-domain", "Ready", timeout=120)
        assert cluster.vp("delete", "glustervolume", "vpgv").returncode == 0
        st = cluster.wait_phase("GlusterVolume", "vpgv", "Deleting", timeout=60)
        assert "in use by storage domain gv-domain" in ready_condition(st)["message"]
        assert "Status: Started" in backend.cli("volume", "info", "vpgv").stdout  # type: ignore[union-attr]
        assert cluster.vp("delete", "storagedomain", "gv-domain").returncode == 0
        wait_for("GlusterVolume gone", lambda: not cluster.get("GlusterVolume", "vpgv"), 120)
        gone = backend.cli("volume", "info", "vpgv", check=False)  # type: ignore[union-attr]
        assert "does not exist" in gone.stdout + gone.stderr
    finally:
        cli = backend.cli  # type: ignore[union-attr]
        cli("volume", "stop", "vpgv", check=False)
        cli("volume", "delete", "vpgv", check=False)
