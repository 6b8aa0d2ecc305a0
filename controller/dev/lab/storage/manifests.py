"""StorageDomain and Disk resources describing the lab's storage servers, for `virtplane apply`.

They validate against today's specs. What the specs cannot say yet travels in annotations (see the
constants): the CHAP user name of an iSCSI LUN (``IscsiLun`` has ``chapSecret`` but no user name) and
where the CHAP password file is (a reference, never the password).
"""

from __future__ import annotations

from typing import Any

from controller.dev.lab.storage.model import GlusterServer, IscsiServer, NfsServer, StorageServer

API_VERSION = "virtplane.io/v1"
NFS_DOMAIN = "lab-nfs"
GLUSTER_DOMAIN = "lab-gluster"
ISCSI_DISK = "lab-iscsi-lun1"
CHAP_SECRET = "lab-iscsi-chap"  # the server-side secret name the Disk refers to
CHAP_USER_ANNOTATION = "virtplane.io/chap-username"
CHAP_SECRET_FILE_ANNOTATION = "virtplane.io/chap-secret-file"


def storage_manifests(servers: list[StorageServer], cluster: str) -> list[dict[str, Any]]:
    return [_manifest(server, cluster) for server in servers]


def _manifest(server: StorageServer, cluster: str) -> dict[str, Any]:
    if isinstance(server, NfsServer):
        nfs = {"server": server.address, "export": str(server.export), "version": "3", "access": "qemu"}
        return _domain(NFS_DOMAIN, {"cluster": cluster, "type": "nfs", "nfs": nfs, "shared": True})
    if isinstance(server, GlusterServer):
        gluster = {"servers": [server.host], "volume": server.volume, "access": "mount"}
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
            "annotations": {
                CHAP_USER_ANNOTATION: server.chap_user,
                CHAP_SECRET_FILE_ANNOTATION: str(server.secret_file),
            },
        },
        "spec": {
            "lun": {
                "iscsi": {"portal": server.portal, "iqn": server.iqn, "lun": server.lun, "chapSecret": CHAP_SECRET}
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
