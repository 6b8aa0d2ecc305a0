"""Real storage servers of `virtplane lab` (nfs-ganesha, glusterd, tgtd) used by QEMU/libvirt on lab hosts.

The servers are started by the fixtures and stopped after; each backend is proven from a guest that boots
from it on lab-1, sees the bytes written there beforehand, and live-migrates to lab-2. The servers are
checked with their own tools (showmount, gluster, tgtadm). Root only; a backend whose packages are not
installed is skipped, naming them. The first test runs the CLI on its own lab directory before the
module's servers start (the servers' ports are per machine).
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt
import pytest
import yaml
from typer.testing import CliRunner

from controller.dev.lab.cli import app
from controller.dev.lab.guest import DEVICES_MARKER, READY_MARKER, GuestImage
from controller.dev.lab.hosts import Lab
from controller.dev.lab.storage import (
    GlusterServer,
    IscsiServer,
    LabStorage,
    NfsServer,
    StorageError,
    parse_storage_kinds,
    procs,
    storage_manifests,
)
from controller.dev.lab.storage.libvirt_xml import (
    gluster_pool_xml,
    iscsi_disk_xml,
    iscsi_secret_xml,
    nfs_disk_xml,
    nfs_snapshot_disk_xml,
)
from specs.kinds import parse_resource
from tests.e2e.helpers import virsh, wait_for

BOOT_TIMEOUT = 90.0
QEMU_MODULES = Path("/usr/lib/x86_64-linux-gnu/qemu")
NEEDS = {
    "nfs": (("ganesha.nfsd", "rpcbind", "rpcinfo", "showmount"), ("block-nfs.so",), "nfs-ganesha nfs-ganesha-vfs "
            "rpcbind nfs-common qemu-block-extra"),
    "gluster": (("glusterd", "gluster", "mount.glusterfs"), (), "glusterfs-server glusterfs-client"),
    "iscsi": (("tgtd", "tgtadm"), ("block-iscsi.so",), "tgt qemu-block-extra"),
}  # fmt: skip


def missing(kind: str) -> str | None:
    tools, modules, packages = NEEDS[kind]
    absent = [t for t in tools if shutil.which(t) is None] + [m for m in modules if not (QEMU_MODULES / m).exists()]
    if kind == "gluster" and not Path("/dev/fuse").exists():
        absent.append("/dev/fuse")
    return f"{kind}: {', '.join(absent)} missing (Debian: {packages})" if absent else None


def need(kind: str) -> None:
    reason = missing(kind)
    if reason is not None:
        pytest.skip(reason)


# -- pure parts (no root, no servers) ---------------------------------------------------------------


def test_storage_option_is_parsed_and_checked() -> None:
    assert parse_storage_kinds("iscsi, nfs") == ("nfs", "iscsi")
    assert parse_storage_kinds("") == ()
    with pytest.raises(StorageError, match="unknown storage ceph; expected any of nfs,gluster,iscsi"):
        parse_storage_kinds("nfs,ceph")


def test_down_never_signals_a_pid_that_is_not_our_server(tmp_path: Path) -> None:
    """Pidfiles that name another process (a reused pid) are ignored: the process lives on."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        for pidfile in ("nfs/rpcbind.pid", "nfs/ganesha.pid", "gluster/glusterd.pid", "iscsi/tgtd.pid"):
            path = tmp_path / "storage" / pidfile
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{other.pid}\n")
        storage = LabStorage(tmp_path)
        assert all(not server.running and server.pids == () for server in storage.status())
        storage.down(timeout=2)
        assert other.poll() is None, "down() signalled a process that is not a lab storage server"
    finally:
        other.kill()
        other.wait()


# -- the CLI on its own lab directory ---------------------------------------------------------------


@pytest.fixture
def cli_lab(new_lab: Lab) -> Iterator[Lab]:
    try:
        yield new_lab
    finally:
        new_lab.down()
        LabStorage(new_lab.dir).down()


@pytest.mark.lab
def test_cli_up_with_storage_prints_manifests_and_down_stops_every_server(cli_lab: Lab, accel: str) -> None:
    kinds = [k for k in ("nfs", "gluster", "iscsi") if missing(k) is None]
    if not kinds:
        pytest.skip("; ".join(filter(None, map(missing, ("nfs", "gluster", "iscsi")))))
    runner = CliRunner()
    args = ["--dir", str(cli_lab.dir), "--qemu-caps-dir", str(cli_lab.qemu_caps_dir), "--accel", accel]
    started = time.monotonic()
    result = runner.invoke(app, ["up", "-n", "1", *args, "--storage", ",".join(kinds)])
    assert result.exit_code == 0, result.output
    print(f"\nlab up -n 1 --storage {','.join(kinds)}: {time.monotonic() - started:.1f} s")
    docs = list(yaml.safe_load_all(result.stdout))
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    expected = {"nfs": ("StorageDomain", "lab-nfs"), "gluster": ("StorageDomain", "lab-gluster"),
                "iscsi": ("Disk", "lab-iscsi-lun1")}  # fmt: skip
    assert names[2:] == [expected[k] for k in kinds]
    for doc in docs:
        parse_resource(doc)
    servers = LabStorage(cli_lab.dir).status()
    assert [s.kind for s in servers] == kinds and all(s.running for s in servers)
    for server in servers:
        if isinstance(server, IscsiServer):
            assert stat.S_IMODE(server.secret_file.stat().st_mode) == 0o600
            password = server.secret_file.read_text()
            assert password not in result.output, "the CHAP password must never be printed"
            lun = docs[names.index(("Disk", "lab-iscsi-lun1"))]
            assert lun["metadata"]["annotations"]["virtplane.io/chap-secret-file"] == str(server.secret_file)

    again = runner.invoke(app, ["up", "-n", "1", *args, "--storage", ",".join(kinds)])
    assert again.exit_code == 0, again.output
    assert [s.pids for s in LabStorage(cli_lab.dir).status()] == [s.pids for s in servers], "up is idempotent"

    shown = runner.invoke(app, ["status", "--dir", str(cli_lab.dir)])
    assert all(re.search(rf"^{k}\s+running\s", shown.output, re.M) for k in kinds), shown.output

    pids = [p for s in servers for p in s.pids]
    down = runner.invoke(app, ["down", "--dir", str(cli_lab.dir)])
    assert down.exit_code == 0, down.output
    assert [p for p in pids if procs.alive(p)] == []
    for port in (111, 20490, 24007, 13260):
        assert not procs.tcp_listening(port), f"port {port} still answers after lab down"
    assert not Path("/var/run/tgtd/socket.13260").exists()
    assert all(not s.running for s in LabStorage(cli_lab.dir).status())


# -- the module's servers and guests --------------------------------------------------------------


@pytest.fixture(scope="module")
def storage(lab: Lab) -> Iterator[LabStorage]:
    the_storage = LabStorage(lab.dir)
    try:
        yield the_storage
    finally:
        lab.down()  # clients first: QEMUs and FUSE mounts live in the hosts' namespaces
        pids = [p for s in the_storage.status() for p in s.pids]
        the_storage.down()
        assert [p for p in pids if procs.alive(p)] == [], "storage servers survived down()"


def server_of(storage: LabStorage, kind: str) -> NfsServer | GlusterServer | IscsiServer:
    need(kind)
    started = time.monotonic()
    (server,) = storage.up([kind])  # type: ignore[list-item]
    print(f"\n{kind} server ready in {time.monotonic() - started:.2f} s")
    assert server.running
    return server


def domain_xml(name: str, image: GuestImage, accel: str, disks: str, serial_log: Path) -> str:
    serial = f"<source path='{escape(str(serial_log))}' append='on'/>"
    return f"""<domain type='{"kvm" if accel == "kvm" else "qemu"}'>
  <name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd><cmdline>{escape(image.cmdline)}</cmdline></os>
  <features><acpi/><apic/></features><on_reboot>destroy</on_reboot>
  <devices>{disks}<serial type='file'>{serial}<target port='0'/></serial>
    <console type='file'>{serial}<target type='serial' port='0'/></console><memballoon model='none'/></devices>
</domain>"""


def boot(lab: Lab, name: str, image: GuestImage, accel: str, disks: str) -> tuple[Path, float]:
    """Define and start a guest on lab-1; return its serial log and seconds to the READY marker."""
    log = lab.shared_dir / f"{name}.serial.log"
    log.unlink(missing_ok=True)
    xml = lab.shared_dir / f"{name}.xml"
    xml.write_text(domain_xml(name, image, accel, disks, log))
    uri = lab.host("lab-1").uri
    virsh(uri, "define", str(xml))
    started = time.monotonic()
    virsh(uri, "start", name)
    wait_for(f"{READY_MARKER} of {name}", lambda: log.exists() and READY_MARKER in log.read_text(), BOOT_TIMEOUT)
    return log, time.monotonic() - started


def disk_line(log: Path, dev: str) -> str | None:
    found = re.search(rf"VIRTPLANE-DISK {dev} ([0-9a-f]+)", log.read_text())
    return found.group(1) if found else None


def migrate(lab: Lab, name: str) -> str:
    """Live-migrate ``name`` lab-1 -> lab-2 without --unsafe (the storage is shared); return a summary."""
    one, two = lab.host("lab-1"), lab.host("lab-2")
    started = time.monotonic()
    virsh(one.uri, "migrate", "--live", "--persistent", "--undefinesource", name, two.uri,
          "--migrateuri", "tcp://127.0.0.1")  # fmt: skip
    wall = time.monotonic() - started
    assert name in virsh(two.uri, "list", "--name").split()
    assert name not in virsh(one.uri, "list", "--all", "--name").split()
    assert lab.host("lab-1").qemu_pids == () and lab.host("lab-2").qemu_pids, "QEMU must have moved to lab-2"
    job = dict(
        (k.strip(), v.strip())
        for k, v in (line.split(":", 1) for line in virsh(two.uri, "domjobinfo", "--completed", name).splitlines()
                     if ":" in line)
    )  # fmt: skip
    return f"virsh {wall:.2f} s, QEMU {job.get('Time elapsed')}, downtime {job.get('Total downtime')}"


def remove(lab: Lab, host: str, name: str) -> None:
    uri = lab.host(host).uri
    virsh(uri, "destroy", name, check=False)
    virsh(uri, "undefine", name, "--snapshots-metadata", check=False)


@pytest.mark.lab
def test_servers_answer_their_own_tools(storage: LabStorage) -> None:
    for kind in ("nfs", "gluster", "iscsi"):
        if missing(kind) is None:
            storage.up([kind])
    for server in storage.status():
        if isinstance(server, NfsServer):
            assert f"{server.export} (everyone)" in procs.run(["showmount", "-e", server.address]).stdout
            rpc = procs.run(["rpcinfo", "-p", server.address]).stdout
            assert re.search(rf"100003\s+3\s+tcp\s+{server.nfs_port}\s+nfs", rpc), rpc
        elif isinstance(server, GlusterServer):
            shown = storage.backend("gluster").cli("volume", "status", server.volume).stdout  # type: ignore[union-attr]
            assert re.search(r"^Brick " + re.escape(f"{server.host}:"), shown, re.M), shown
            assert re.search(r"\s+\d+\s+0\s+Y\s+\d+\s*$", shown, re.M), f"brick not online:\n{shown}"
        else:
            shown = procs.run(["tgtadm", "-C", str(server.control_port), "--lld", "iscsi", "--op", "show",
                               "--mode", "target"]).stdout  # fmt: skip
            assert f"Target 1: {server.iqn}" in shown and f"Backing store path: {server.lun_file}" in shown
            assert re.search(rf"Account information:\s+{server.chap_user}\s+ACL information:\s+127.0.0.1", shown)


@pytest.mark.lab
def test_nfs_guest_boots_hotplugs_snapshots_and_migrates(
    lab: Lab, storage: LabStorage, guest_image: GuestImage, accel: str
) -> None:
    server = server_of(storage, "nfs")
    assert isinstance(server, NfsServer)
    for image, size in (("nfs1.qcow2", "64M"), ("nfs1-hot.qcow2", "16M")):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", server.url(image), size], check=True)
    assert (server.export / "nfs1.qcow2").exists(), "qemu-img over nfs:// must create the file in the export"
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4096", server.url("nfs1.qcow2")],
                   check=True, capture_output=True)  # fmt: skip
    log, seconds = boot(lab, "nfs1", guest_image, accel, nfs_disk_xml(server, "nfs1.qcow2", "vda"))
    print(f"guest boot from NFS ({accel}): {seconds:.2f} s")
    try:
        assert disk_line(log, "vda") == "5a" * 16, "the guest must read what was written over nfs://"
        uri = lab.host("lab-1").uri
        hot = lab.shared_dir / "nfs1-hot.xml"
        hot.write_text(nfs_disk_xml(server, "nfs1-hot.qcow2", "vdb"))
        virsh(uri, "attach-device", "nfs1", str(hot), "--live", "--persistent")
        wait_for("vdb in the guest", lambda: f"{DEVICES_MARKER} block=vda,vdb," in log.read_text(), 30)

        virsh(uri, "snapshot-create-as", "nfs1", "s1")  # internal, with memory, inside the qcow2 on the server
        listed = subprocess.run(["qemu-img", "snapshot", "-U", "-l", server.url("nfs1.qcow2")],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert re.search(r"^\d+\s+s1\s", listed, re.M), listed
        virsh(uri, "snapshot-revert", "nfs1", "s1")
        assert virsh(uri, "domstate", "nfs1").strip() == "running"

        snap = lab.shared_dir / "nfs1-ext.xml"
        snap.write_text(f"<domainsnapshot><name>e1</name><disks>{nfs_snapshot_disk_xml(server, 'vda', 'nfs1-e1.qcow2')}"
                        "<disk name='vdb' snapshot='no'/></disks></domainsnapshot>")  # fmt: skip
        virsh(uri, "snapshot-create", "nfs1", str(snap), "--disk-only", "--atomic", "--no-metadata")
        assert (server.export / "nfs1-e1.qcow2").exists(), "the external overlay must be on the NFS server"
        assert f"{server.export}/nfs1-e1.qcow2" in virsh(uri, "domblklist", "nfs1")

        # libvirt refuses to migrate a domain that has snapshot metadata ("cannot migrate domain with 1
        # snapshots"): drop the metadata (the snapshot stays inside the qcow2), redefine it on the destination.
        snapshot_xml = lab.shared_dir / "nfs1-s1.xml"
        snapshot_xml.write_text(virsh(uri, "snapshot-dumpxml", "nfs1", "s1", "--security-info"))
        virsh(uri, "snapshot-delete", "nfs1", "s1", "--metadata")
        print(f"NFS migration: {migrate(lab, 'nfs1')}")
        two = lab.host("lab-2").uri
        virsh(two, "snapshot-create", "nfs1", str(snapshot_xml), "--redefine")
        assert "s1" in virsh(two, "snapshot-list", "nfs1", "--name").split()
        virsh(two, "detach-disk", "nfs1", "vdb", "--live")  # the guest answers ACPI unplug on lab-2
        unplugged = f"{DEVICES_MARKER} block=vda, "
        wait_for("vdb gone in the guest", lambda: log.read_text().rstrip().splitlines()[-1].startswith(unplugged), 30)
    finally:
        remove(lab, "lab-1", "nfs1")
        remove(lab, "lab-2", "nfs1")


@pytest.mark.lab
def test_gluster_netfs_pool_mounts_in_each_host_namespace_and_guest_migrates(
    lab: Lab, storage: LabStorage, guest_image: GuestImage, accel: str
) -> None:
    server = server_of(storage, "gluster")
    assert isinstance(server, GlusterServer)
    hosts = [lab.host("lab-1"), lab.host("lab-2")]
    try:
        for host in hosts:
            pool = lab.shared_dir / f"gluster-pool-{host.name}.xml"
            client_log = server.dir / "log" / f"client-{host.name}.log"
            pool.write_text(gluster_pool_xml(server, "lab-gluster", client_log))
            virsh(host.uri, "pool-define", str(pool))
            virsh(host.uri, "pool-start", "lab-gluster")
            assert host.pid is not None
            mounts = Path(f"/proc/{host.pid}/mounts").read_text()
            assert f"{server.host}:/{server.volume} {server.mount_path} fuse.glusterfs" in mounts
        assert str(server.mount_path) not in Path("/proc/self/mounts").read_text(), "mounted only in the hosts"
        assert all((server.dir / "log" / f"client-{h.name}.log").exists() for h in hosts), "client logs in the lab"

        one, two = hosts[0].uri, hosts[1].uri
        virsh(one, "vol-create-as", "lab-gluster", "gl1.qcow2", "64M", "--format", "qcow2")
        virsh(two, "pool-refresh", "lab-gluster")
        assert "gl1.qcow2" in virsh(two, "vol-list", "lab-gluster"), "a volume made on lab-1 is seen on lab-2"
        image = server.mount_path / "gl1.qcow2"
        subprocess.run(["nsenter", f"--mount=/proc/{hosts[0].pid}/ns/mnt", "--", "qemu-io", "-f", "qcow2",
                        "-c", "write -P 0x6b 0 4096", str(image)], check=True, capture_output=True)  # fmt: skip

        disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
                f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>")  # fmt: skip
        log, seconds = boot(lab, "gl1", guest_image, accel, disk)
        print(f"guest boot from Gluster FUSE ({accel}): {seconds:.2f} s")
        assert disk_line(log, "vda") == "6b" * 16
        print(f"Gluster migration: {migrate(lab, 'gl1')}")
    finally:
        remove(lab, "lab-1", "gl1")
        remove(lab, "lab-2", "gl1")
        for host in hosts:
            virsh(host.uri, "pool-destroy", "lab-gluster", check=False)
            virsh(host.uri, "pool-undefine", "lab-gluster", check=False)
    for host in hosts:
        assert host.pid is not None
        assert "fuse.glusterfs" not in Path(f"/proc/{host.pid}/mounts").read_text(), "pool-destroy unmounts"


def define_secret(uri: str, xml: str, value_file: Path, tmp: Path) -> None:
    path = tmp / "secret.xml"
    path.write_text(xml)
    uuid = re.search(r"Secret (\S+) created", virsh(uri, "secret-define", str(path)))
    assert uuid is not None
    virsh(uri, "secret-set-value", uuid.group(1), "--file", str(value_file), "--plain")


@pytest.mark.lab
def test_iscsi_chap_lun_boots_migrates_and_a_wrong_password_is_refused(
    lab: Lab, storage: LabStorage, guest_image: GuestImage, accel: str, tmp_path: Path
) -> None:
    server = server_of(storage, "iscsi")
    assert isinstance(server, IscsiServer)
    one, two = lab.host("lab-1").uri, lab.host("lab-2").uri
    for uri in (one, two):  # the destination of a migration needs the secret too
        define_secret(uri, iscsi_secret_xml(server), server.secret_file, tmp_path)
    portal_host = server.portal.partition(":")[0]
    opts = (f"driver=raw,file.driver=iscsi,file.transport=tcp,file.portal={server.portal},file.target={server.iqn},"
            f"file.lun={server.lun},file.user={server.chap_user},file.password-secret=chap")  # fmt: skip
    subprocess.run(["qemu-io", "--object", f"secret,id=chap,file={server.secret_file}", "--image-opts", opts,
                    "-c", "write -P 0xa5 0 4096"], check=True, capture_output=True)  # fmt: skip
    try:
        log, seconds = boot(lab, "is1", guest_image, accel, iscsi_disk_xml(server, "vda"))
        print(f"guest boot with the iSCSI LUN ({accel}): {seconds:.2f} s")
        assert disk_line(log, "vda") == "a5" * 16, "the guest must see the LUN's content"
        sessions = procs.run(["tgtadm", "-C", str(server.control_port), "--lld", "iscsi", "--op", "show",
                              "--mode", "conn", "--tid", "1"]).stdout  # fmt: skip
        assert f"IP Address: {portal_host}" in sessions, sessions
        print(f"iSCSI migration: {migrate(lab, 'is1')}")
    finally:
        remove(lab, "lab-1", "is1")
        remove(lab, "lab-2", "is1")

    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    define_secret(two, iscsi_secret_xml(server).replace(server.secret_usage, "lab-wrong"), wrong, tmp_path)
    for name, usage, code, text in (
        ("is-wrong", "lab-wrong", libvirt.VIR_ERR_INTERNAL_ERROR, "Failed to log in to target. Status: "
         "Authentication failure(513)"),
        ("is-nosecret", "lab-absent", libvirt.VIR_ERR_NO_SECRET, "no secret with matching usage 'lab-absent'"),
    ):  # fmt: skip
        xml = domain_xml(name, guest_image, accel, iscsi_disk_xml(server, "vda", usage), tmp_path / f"{name}.log")
        libvirt.registerErrorHandler(lambda *_: None, None)  # the refusal is asserted, not printed
        conn = libvirt.open(two)
        try:
            domain = conn.defineXML(xml)
            with pytest.raises(libvirt.libvirtError) as refused:
                domain.create()
            assert refused.value.get_error_code() == code
            assert text in str(refused.value)
            domain.undefine()
        finally:
            conn.close()
            libvirt.registerErrorHandler(None, None)
    assert lab.host("lab-2").qemu_pids == (), "no QEMU may keep running after a refused login"


def test_chap_password_file_is_private_and_kept(tmp_path: Path) -> None:
    from controller.dev.lab.storage.iscsi import write_secret

    path = tmp_path / "chap"
    write_secret(path)
    first = path.read_text()
    assert len(first) == 16 and first.isalnum()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_secret(path)
    assert path.read_text() == first, "an existing password is kept (libvirt secrets on hosts stay valid)"


def test_manifests_validate_against_the_specs(tmp_path: Path) -> None:
    servers = [
        NfsServer("nfs", True, "127.0.0.1", tmp_path / "export", 20490, 20491, 1, 2, tmp_path),
        GlusterServer("gluster", True, "vm", 24007, "vplab", (tmp_path / "b1",), 1, tmp_path / "mnt", 3, (4,),
                      tmp_path),
        IscsiServer("iscsi", True, "127.0.0.1:13260", "iqn.2024-01.io.virtplane:lab", 1, tmp_path / "lun1.img",
                    1 << 28, "vplab", tmp_path / "chap-password", "virtplane-lab-iscsi", 13260, 5, tmp_path),
    ]  # fmt: skip
    docs = storage_manifests(servers, "east")  # type: ignore[arg-type]
    parsed = [parse_resource(doc) for doc in docs]
    assert [(r.kind, r.metadata.name) for r in parsed] == [
        ("StorageDomain", "lab-nfs"), ("StorageDomain", "lab-gluster"), ("Disk", "lab-iscsi-lun1"),
    ]  # fmt: skip
    assert docs[0]["spec"]["nfs"] == {"server": "127.0.0.1", "export": str(tmp_path / "export"), "version": "3",
                                      "access": "qemu"}  # fmt: skip
    assert docs[2]["spec"]["lun"]["iscsi"]["chapSecret"] == "lab-iscsi-chap"
    assert "password" not in yaml.safe_dump(docs).lower().replace("chap-password", "")

