"""Lab storage servers: start time, sequential write throughput, guest boot and live migration per backend.

    sudo .venv/bin/python bench/lab_storage.py [--reps 3] [--mib 256]

Everything runs under a fresh temporary directory (2 lab hosts, nfs/gluster/iscsi servers) and is stopped
by pid at the end. Baseline in the same run: the lab's local shared directory (ext4), for throughput and
for guest boot/migration. Throughput is qemu-io (1 MiB sequential writes, depth 1, cache none) through
each backend's client as QEMU uses it: libnfs, the Gluster FUSE mount, libiscsi (and libgfapi for the
open-time note), outside virtplane.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import REPO, load_note, stop_on_sigterm

from controller.dev.lab.guest import READY_MARKER, build_guest_image
from controller.dev.lab.hosts import Lab
from controller.dev.lab.storage import GlusterServer, IscsiServer, LabStorage, NfsServer
from controller.dev.lab.storage.libvirt_xml import gluster_pool_xml, iscsi_disk_xml, iscsi_secret_xml, nfs_disk_xml

CACHE = Path("/var/cache/virtplane-lab")


def timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def sh(*argv: str, ns_pid: int | None = None) -> str:
    prefix = ["nsenter", f"--mount=/proc/{ns_pid}/ns/mnt", "--"] if ns_pid else []
    return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, timeout=600).stdout


def virsh(uri: str, *args: str) -> str:
    return sh("virsh", "-c", uri, *args)


def bench_write(target: list[str], mib: int, ns_pid: int | None = None) -> float:
    """MiB/s of ``mib`` sequential 1 MiB writes (queue depth 1, cache none, then a flush) with qemu-io on
    ``target`` (``-f raw <filename>`` or ``--object ... --image-opts ...``), open and close included."""
    commands = [arg for i in range(mib) for arg in ("-c", f"write -q -P 0x11 {i}M 1M")] + ["-c", "flush"]
    return mib / timed(lambda: sh("qemu-io", *target, *commands, ns_pid=ns_pid))


def start_times(reps: int) -> None:
    for kind in ("nfs", "gluster", "iscsi"):
        cold, warm, down = [], [], []
        for _ in range(reps):
            with tempfile.TemporaryDirectory(prefix="vp-storage-") as tmp:
                storage = LabStorage(tmp)
                try:
                    cold.append(timed(lambda s=storage, k=kind: s.up([k])))  # type: ignore[misc]
                    down.append(timed(storage.down))
                    warm.append(timed(lambda s=storage, k=kind: s.up([k])))  # type: ignore[misc]
                finally:
                    storage.down()
        print(f"start {kind:<8} fresh dir p50 {statistics.median(cold):.2f} s (max {max(cold):.2f}); "
              f"restart on existing state {statistics.median(warm):.2f} s; down {statistics.median(down):.2f} s")


def domain(name: str, image: object, disk: str, log: Path) -> str:
    serial = f"<source path='{log}' append='on'/>"
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type><kernel>{image.kernel}</kernel>"  # type: ignore[attr-defined]
            f"<initrd>{image.initrd}</initrd><cmdline>{image.cmdline}</cmdline></os>"  # type: ignore[attr-defined]
            f"<features><acpi/><apic/></features><devices>{disk}"
            f"<serial type='file'>{serial}<target port='0'/></serial><memballoon model='none'/></devices></domain>")


def boot_and_migrate(lab: Lab, label: str, disk: str, image: object, reps: int) -> None:
    one, two = lab.host("lab-1").uri, lab.host("lab-2").uri
    boots, migrations, downtimes = [], [], []
    for rep in range(reps):
        name = f"b-{label}-{rep}"
        log = lab.shared_dir / f"{name}.log"
        xml = lab.shared_dir / f"{name}.xml"
        xml.write_text(domain(name, image, disk, log))
        virsh(one, "define", str(xml))
        started = time.monotonic()
        virsh(one, "start", name)
        while not (log.exists() and READY_MARKER in log.read_text()):
            if time.monotonic() - started > 120:
                raise TimeoutError(f"{name} did not boot")
            time.sleep(0.05)
        boots.append(time.monotonic() - started)
        migrations.append(timed(lambda n=name: virsh(one, "migrate", "--live", "--persistent",  # type: ignore[misc]
                                                      "--undefinesource", n, two, "--migrateuri", "tcp://127.0.0.1",
                                                      *(["--unsafe"] if label in ("local", "warm-up") else []))))
        job = virsh(two, "domjobinfo", "--completed", name)
        found = re.search(r"Total downtime:\s+(\d+)", job)
        downtimes.append(float(found.group(1)) if found else float("nan"))
        virsh(two, "destroy", name)
        virsh(two, "undefine", name)
    print(f"{label:<8} boot to READY p50 {statistics.median(boots):.2f} s (all {', '.join(f'{b:.2f}' for b in boots)}); "
          f"virsh migrate p50 {statistics.median(migrations):.2f} s, downtime p50 {statistics.median(downtimes):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    stop_on_sigterm()
    print(f"# {load_note()}  (repo {REPO})")
    start_times(args.reps)
    image = build_guest_image(CACHE / "guest")
    with tempfile.TemporaryDirectory(prefix="vp-storage-bench-") as tmp:
        lab = Lab(tmp, qemu_caps_dir=CACHE / "qemu-caps")
        storage = LabStorage(tmp)
        try:
            lab.up(2)
            nfs, gluster, iscsi = storage.up(["nfs", "gluster", "iscsi"])
            assert isinstance(nfs, NfsServer) and isinstance(gluster, GlusterServer)
            assert isinstance(iscsi, IscsiServer)
            run_all(lab, nfs, gluster, iscsi, image, args.reps, args.mib)
        finally:
            lab.down()
            storage.down()
    print(f"# {load_note()}")


def run_all(lab: Lab, nfs: NfsServer, gluster: GlusterServer, iscsi: IscsiServer, image: object, reps: int,
            mib: int) -> None:
    mb = f"{mib}M"
    local = lab.shared_dir / "bench.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", str(local), mb)
    print(f"write local    {bench_write(['-f', 'raw', '-t', 'none', str(local)], mib):7.1f} MiB/s  (ext4 file, baseline)")
    sh("qemu-img", "create", "-q", "-f", "raw", nfs.url("bench.raw"), mb)
    print(f"write nfs      {bench_write(['-f', 'raw', '-t', 'none', nfs.url('bench.raw')], mib):7.1f} MiB/s  (libnfs)")
    hosts = [lab.host("lab-1"), lab.host("lab-2")]
    for host in hosts:
        pool = lab.shared_dir / f"pool-{host.name}.xml"
        pool.write_text(gluster_pool_xml(gluster, "lab-gluster", gluster.dir / "log" / f"client-{host.name}.log"))
        virsh(host.uri, "pool-define", str(pool))
        virsh(host.uri, "pool-start", "lab-gluster")
    fuse_file = gluster.mount_path / "bench.raw"
    sh("qemu-img", "create", "-q", "-f", "raw", str(fuse_file), mb, ns_pid=hosts[0].pid)
    fuse = bench_write(["-f", "raw", "-t", "none", str(fuse_file)], mib, ns_pid=hosts[0].pid)
    print(f"write gluster  {fuse:7.1f} MiB/s  (FUSE mount in lab-1's namespace)")
    gfapi = f"gluster://{gluster.host}/{gluster.volume}/bench.raw"
    print(f"open  gfapi    {timed(lambda: sh('qemu-img', 'info', gfapi)):7.1f} s      (qemu-img info {gfapi})")
    opts = (f"driver=raw,cache.direct=on,file.driver=iscsi,file.transport=tcp,file.portal={iscsi.portal},file.target={iscsi.iqn},"
            f"file.lun={iscsi.lun},file.user={iscsi.chap_user},file.password-secret=chap")
    secret = ["--object", f"secret,id=chap,file={iscsi.secret_file}", "--image-opts", opts]
    print(f"write iscsi    {bench_write(secret, min(mib, iscsi.lun_size >> 20)):7.1f} MiB/s  (libiscsi, CHAP)")

    for host in hosts:
        xml = lab.shared_dir / "secret.xml"
        xml.write_text(iscsi_secret_xml(iscsi))
        uuid = virsh(host.uri, "secret-define", str(xml)).split()[1]
        virsh(host.uri, "secret-set-value", uuid, "--file", str(iscsi.secret_file), "--plain")
    local_disk = lab.shared_dir / "boot.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(local_disk), "64M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", nfs.url("boot.qcow2"), "64M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(gluster.mount_path / "boot.qcow2"), "64M", ns_pid=hosts[0].pid)
    file_disk = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>"
                 "<source file='{}'/><target dev='vda' bus='virtio'/></disk>")
    boot_and_migrate(lab, "warm-up", file_disk.format(local_disk), image, 1)  # first start on a fresh lab is slower
    boot_and_migrate(lab, "local", file_disk.format(local_disk), image, reps)
    boot_and_migrate(lab, "nfs", nfs_disk_xml(nfs, "boot.qcow2", "vda"), image, reps)
    boot_and_migrate(lab, "gluster", file_disk.format(gluster.mount_path / "boot.qcow2"), image, reps)
    boot_and_migrate(lab, "iscsi", iscsi_disk_xml(iscsi, "vda"), image, reps)
    for host in hosts:
        virsh(host.uri, "pool-destroy", "lab-gluster")


if __name__ == "__main__":
    if shutil.which("ganesha.nfsd") is None:
        raise SystemExit("install the lab storage packages first (scripts/lab-packages.txt)")
    main()
