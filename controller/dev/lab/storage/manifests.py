"""StorageDomain and Disk resources describing the lab's storage servers, for `virtplane apply`.

The iSCSI LUN's CHAP password is referenced by name (``chapSecret: lab-iscsi-chap``): ``install_chap_secret``
copies it into ``<lab dir>/storage/secrets`` (0700 directory, 0600 file), the directory to give
``virtplane server --secrets-dir``. It is never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from controller.dev.lab.storage.model import GlusterServer, IscsiServer, NfsServer, StorageServer

API_VERSION = "virtplane.io/v1"
NFS_DOMAIN = "lab-nfs"
GLUSTER_DOMAIN = "lab-gluster"
ISCSI_DISK = "lab-iscsi-lun1"
CHAP_SECRET = "lab-iscsi-chap"  # the server-side secret name the Disk refers to
CHAP_SECRET_FILE_ANNOTATION = "virtplane.io/chap-secret-file"  # where the lab keeps the password (a hint)


def install_chap_secret(server: IscsiServer, secrets_dir: Path) -> Path:
    """Copy the lab target's CHAP password to ``secrets_dir/lab-iscsi-chap`` (mode 0600); return the file."""
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    secrets_dir.chmod(0o700)
    dest = secrets_dir / CHAP_SECRET
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(server.secret_file.read_text().strip() + "\n")
    dest.chmod(0o600)
    return dest


def storage_manifests(servers: list[StorageServer], cluster: str) -> list[dict[str, Any]]:
    return [_manifest(server, cluster) for server in servers]


def _manifest(server: StorageServer, cluster: str) -> dict[str, Any]:
    if isinstance(server, NfsServer):
        nfs = {"server": server.address, "export": str(server.export), "version": "3", "access": "qemu"}
        return _domain(NFS_DOMAIN, {"cluster": cluster, "type": "nfs", "nfs": nfs, "shared": True})
    if isinstance(server, GlusterServer):
        gluster = {"servers": [server.host], "volume": server.volume, "access": "mount",
                   "mountPath": str(server.mount_path)}
        return _domain(GLUSTER_DOMAIN, {"cluster": cluster, "type": "gluster", "gluster": gluster, "shared": True})
    return _lun_disk(server)


def _domain(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "StorageDomain", "metadata": {"name": name}, "spec": spec}


def _lun_disk(server: IscsiServer) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Disk",
        "metadata": {
            "name": ISCSI_DISK,
            "annotations": {CHAP_SECRET_FILE_ANNOTATION: str(server.secret_file)},
        },
        "spec": {
            "lun": {
                "iscsi": {"portal": server.portal, "iqn": server.iqn, "lun": server.lun,
                          "chapUsername": server.chap_user, "chapSecret": CHAP_SECRET}
            },
            "reclaimPolicy": "Retain",
        },
    }


def status_lines(servers: list[StorageServer]) -> list[str]:
    """`virtplane lab status` lines for the storage servers: kind, state, pids, how clients reach it."""
    lines = [f"{'STORAGE':<8} {'STATE':<8} {'PIDS':<16} WHERE"]
    for server in servers:
        state = "running" if server.running else "off"
        pids = ",".join(map(str, server.pids)) or "-"
        if isinstance(server, NfsServer):
            where = f"nfs://{server.address}{server.export}/ (rpcbind 111, nfs {server.nfs_port})"
        elif isinstance(server, GlusterServer):
            where = f"{server.host}:/{server.volume} (glusterd {server.port}; hosts mount it at {server.mount_path})"
        else:
            where = f"iscsi://{server.portal}/{server.iqn}/{server.lun} (CHAP user {server.chap_user})"
        lines.append(f"{server.kind:<8} {state:<8} {pids:<16} {where}")
    return lines
