"""Shared storage through virtplane, per backend (root only): guest boot, guest-disk write throughput and
live migration of VMs whose disks virtplane put on the lab's real storage servers.

    sudo .venv/bin/python bench/shared_storage.py [--mib 64] [--reps 3]

Starts the lab's storage servers (nfs-ganesha, glusterd, tgtd), 2 lab hosts, etcd and `virtplane server`,
applies the lab's StorageDomains (lab-shared: a local directory, the baseline; lab-nfs: libnfs; lab-gluster:
FUSE mount) and its iSCSI LUN Disk (CHAP by reference), then per backend:

- boot: apply of a VM whose only disk is on the backend -> the guest's READY marker on its console;
- write: ``--mib`` MiB of sequential writes (one qemu-io ``write`` then ``flush``) on the running VM's disk,
  inside its QEMU (HMP ``qemu-io -d``), beside the same writes with ``qemu-io`` on an image of the same
  backend outside virtplane (libnfs URL, a file in the FUSE mount from a lab host's namespace, libiscsi
  with CHAP); the ratio is ours/outside;
- migrate: `virtplane migrate vm/X --to <other> --wait`, wall time.

Everything is stopped by pid at the end. TCG unless the KVM probe boots the guest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import lab_with_server, load_note, vp

from controller.dev.lab.guest import READY_MARKER
from controller.dev.lab.storage import GlusterServer, IscsiServer, LabStorage, NfsServer, storage_manifests
from controller.dev.lab.storage.manifests import install_chap_secret

API = "virtplane.io/v1"


def sh(*argv: str, ns_pid: int | None = None) -> str:
    prefix = ["nsenter", f"--mount=/proc/{ns_pid}/ns/mnt", "--"] if ns_pid else []
    return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, timeout=600).stdout


def virsh(uri: str, *args: str) -> str:
    return sh("virsh", "-c", uri, *args)


def timed(fn: Any) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def outside_write(target: list[str], mib: int, ns_pid: int | None = None) -> float:
    """MiB/s of one ``mib`` MiB write + flush with qemu-io on ``target``, outside virtplane (open included)."""
    return mib / timed(lambda: sh("qemu-io", *target, "-c", f"write -q -P 0x11 0 {mib}M", "-c", "flush",
                                  ns_pid=ns_pid))


def guest_write(uri: str, vm: str, mib: int) -> float:
    """MiB/s of the same write + flush inside the VM's QEMU, on its first disk (HMP qemu-io)."""
    reply = json.loads(virsh(uri, "qemu-monitor-command", vm, '{"execute":"query-block"}'))
    device = reply["return"][0]["qdev"]

    def write() -> None:
        for command in (f"write -q -P 0x22 0 {mib}M", "flush"):
            out = virsh(uri, "qemu-monitor-command", "--hmp", vm, f'qemu-io -d {device} "{command}"')
            if out.strip():
                raise SystemExit(f"qemu-io in {vm}: {out}")

    return mib / timed(write)


def wait(what: str, check: Any, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise SystemExit(f"timed out: {what}")


def status(api: Any, kind: str, name: str) -> dict[str, Any]:
    try:
        return api.get(kind, name).get("status") or {}
    except Exception:
        return {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vp-shared-storage-") as tmp:
        storage = LabStorage(tmp)
        try:
            servers = {s.kind: s for s in storage.up(["nfs", "gluster", "iscsi"])}
            secrets = install_chap_secret(servers["iscsi"], Path(tmp) / "secrets").parent  # type: ignore[arg-type]
            with lab_with_server("bench-shared-", 2, "--secrets-dir", str(secrets)) as run:
                bench(run, servers, args.mib, args.reps)
        finally:
            storage.down()


def bench(run: Any, servers: dict[str, Any], mib: int, reps: int) -> None:
    api, uris, lab = run.api, run.uris, run.lab
    nfs: NfsServer = servers["nfs"]
    gluster: GlusterServer = servers["gluster"]
    iscsi: IscsiServer = servers["iscsi"]
    api.apply([{"apiVersion": API, "kind": "Cluster", "metadata": {"name": "lab"}, "spec": {}}, *run.docs,
               *storage_manifests([nfs, gluster, iscsi], "lab")])
    for sd in ("lab-shared", "lab-nfs", "lab-gluster"):
        wait(f"{sd} Ready", lambda s=sd: status(api, "storagedomains", s).get("phase") == "Ready")
    wait("LUN Ready", lambda: status(api, "disks", "lab-iscsi-lun1").get("phase") == "Ready")
    print(f"# {load_note()} before the run; accel {run.accel}; {mib} MiB writes, {reps} boots+migrations each",
          flush=True)
    ns = lab.host("lab-1").pid
    raw = f"{mib + 8}M"
    sh("qemu-img", "create", "-q", "-f", "raw", str(lab.shared_dir / "out.raw"), raw)
    sh("qemu-img", "create", "-q", "-f", "raw", nfs.url("out.raw"), raw)
    sh("qemu-img", "create", "-q", "-f", "raw", str(gluster.mount_path / "out.raw"), raw, ns_pid=ns)
    opts = (f"driver=raw,cache.direct=on,file.driver=iscsi,file.transport=tcp,file.portal={iscsi.portal},"
            f"file.target={iscsi.iqn},file.lun={iscsi.lun},file.user={iscsi.chap_user},file.password-secret=chap")
    outside = {
        "local": (["-f", "raw", "-t", "none", str(lab.shared_dir / "out.raw")], None),
        "nfs": (["-f", "raw", "-t", "none", nfs.url("out.raw")], None),
        "gluster": (["-f", "raw", "-t", "none", str(gluster.mount_path / "out.raw")], ns),
        "iscsi": (["--object", f"secret,id=chap,file={iscsi.secret_file}", "--image-opts", opts], None),
    }
    domains = {"local": "lab-shared", "nfs": "lab-nfs", "gluster": "lab-gluster", "iscsi": None}
    print(f"{'backend':<8} {'boot p50':>9} {'write ours':>11} {'outside':>9} {'ratio':>6} {'migrate p50':>12}")
    for label, domain in (("warm-up", "lab-shared"), *domains.items()):
        key = "local" if label == "warm-up" else label
        boots, migrations, ours, theirs = [], [], [], []
        for rep in range(1 if label == "warm-up" else reps):
            vm = f"b-{label}-{rep}"
            disk = "lab-iscsi-lun1"
            docs: list[dict[str, Any]] = []
            if domain is not None:
                disk = f"{vm}-d"
                docs.append({"apiVersion": API, "kind": "Disk", "metadata": {"name": disk},
                             "spec": {"storageDomain": domain, "format": "raw", "size": f"{mib + 8}Mi"}})
                api.apply(docs)
                wait(f"{disk} Ready", lambda d=disk: status(api, "disks", d).get("phase") == "Ready")
            spec = {"cluster": "lab", "cpu": {"cores": 1}, "memory": {"size": "128Mi"},
                    "boot": {"kernel": str(run.image.kernel), "initrd": str(run.image.initrd),
                             "cmdline": run.image.cmdline},
                    "disks": [{"disk": disk}], "placement": {"allowedHosts": ["lab-1", "lab-2"]}}
            sent = time.monotonic()
            api.apply([{"apiVersion": API, "kind": "VirtualMachine", "metadata": {"name": vm}, "spec": spec}])
            host = wait(f"{vm} placed", lambda v=vm: status(api, "virtualmachines", v).get("host"))
            log = lab.dir / "hosts" / host / "log" / "qemu" / f"{vm}.console.log"
            wait(f"{vm} booted", lambda p=log: p.exists() and READY_MARKER in p.read_text(errors="replace"))
            boots.append(time.monotonic() - sent)
            ours.append(guest_write(uris[host], vm, mib))
            target, pid = outside[key]
            theirs.append(outside_write(target, mib, pid))
            other = "lab-2" if host == "lab-1" else "lab-1"
            done, wall = vp(run.server, "migrate", f"vm/{vm}", "--to", other, "--wait", "--timeout", "300")
            if done.returncode != 0:
                raise SystemExit(f"migrate {vm}: {done.stdout}{done.stderr}")
            migrations.append(wall)
            api.delete("virtualmachines", vm)
            wait(f"{vm} gone", lambda v=vm: not any(v in virsh(u, "list", "--all", "--name").split()
                                                     for u in uris.values()))
            if domain is not None:
                api.delete("disks", disk)
        if label == "warm-up":
            continue
        w_ours, w_theirs = statistics.median(ours), statistics.median(theirs)
        print(f"{label:<8} {statistics.median(boots):8.2f}s {w_ours:8.1f} MiB/s {w_theirs:6.1f} MiB/s "
              f"{w_ours / w_theirs:5.2f}x {statistics.median(migrations):11.2f}s", flush=True)
    print(f"# {load_note()} after the run")


if __name__ == "__main__":
    main()
