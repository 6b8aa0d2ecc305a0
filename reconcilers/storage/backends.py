"""Storage backends: the one place that knows what each StorageDomain type needs. Pure.

For each ``spec.type`` (and access mode) a ``StorageBackend`` answers:

- ``pool(sd)``: the libvirt pool every host that sees the domain must have (None: the type needs none);
- ``image_dir(sd)``: where the images of the domain's Disks are, as hosts see that path (None: not files);
- ``nfs(sd)``: the NFS export the server itself reaches images on, over libnfs (None: through a pool);
- ``disk_source(sd, path)``: how a VM's domain XML reaches one image (a file, or a network disk);
- ``unsupported(sd)``: why this version cannot serve the domain yet (None: it can).

| type / access            | hosts reach images by                    | images created by            |
|--------------------------|------------------------------------------|------------------------------|
| local, posix             | ``dir`` pool over the path               | libvirt (pool volumes)       |
| posix with ``mount``     | ``netfs`` pool: libvirtd mounts it       | libvirt (pool volumes)       |
| gluster (mount)          | ``netfs`` pool, format glusterfs (FUSE)  | libvirt (pool volumes)       |
| nfs (mount)              | ``netfs`` pool, format nfs (kernel NFS)  | libvirt (pool volumes)       |
| nfs (qemu)               | QEMU's libnfs: ``<disk type='network'>`` | the server, over libnfs      |

Adding a type: a backend here, its ``*PoolConfig`` in ``reconcilers.domain`` (with the codec's render and
parse for it in ``controller.adapters.libvirt.codec.resources``), and its entry in ``backend_for``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from reconcilers.domain import (
    DirPoolConfig,
    DiskSource,
    FileSource,
    NetfsFormat,
    NetfsPoolConfig,
    NetworkSource,
    NfsExport,
    PoolConfig,
    PoolName,
)
from specs.storage import StorageDomain

MOUNT_ROOT = "/var/lib/virtplane/mnt"


def pool_name(domain: str) -> PoolName:
    """The libvirt pool of StorageDomain ``domain`` on every host: ``vp-<domain>``."""
    return PoolName(f"vp-{domain}")


def default_mount_path(domain: str) -> str:
    return posixpath.join(MOUNT_ROOT, domain)


@dataclass(frozen=True)
class PoolBackend:
    """Images are files in a libvirt pool every host has at the same path: a ``dir`` pool over a directory
    (local, posix), or a ``netfs`` pool that libvirtd mounts (posix with mount, gluster, nfs with mount)."""

    type: str

    def unsupported(self, sd: StorageDomain) -> str | None:
        spec = sd.spec
        if spec.gluster is not None and spec.gluster.access == "gfapi":
            return ("gluster access gfapi is not served yet (libgfapi costs ~10 s per image open here); use "
                    "access: mount (a FUSE mount on each host)")
        return None if self.pool(sd) is not None else f"type {self.type} needs its {self.type} block"

    def pool(self, sd: StorageDomain) -> PoolConfig | None:
        spec, name = sd.spec, pool_name(sd.metadata.name)
        if spec.local is not None:
            return DirPoolConfig(name, spec.local.path)
        if spec.posix is not None:
            mount = spec.posix.mount
            if mount is None:
                return DirPoolConfig(name, spec.posix.path)
            fmt: NetfsFormat = "nfs" if mount.fsType == "nfs4" else mount.fsType
            version = "4" if mount.fsType == "nfs4" else None
            return NetfsPoolConfig(name, spec.posix.path, mount.server, mount.remote_path, fmt, version,
                                   mount.option_list)
        if spec.gluster is not None:
            path = spec.gluster.mountPath or default_mount_path(sd.metadata.name)
            first, *others = spec.gluster.servers
            backups = (f"backup-volfile-servers={':'.join(others)}",) if others else ()
            return NetfsPoolConfig(name, path, first, "/" + spec.gluster.volume, "glusterfs", None, backups)
        if spec.nfs is not None and spec.nfs.access == "mount":
            path = spec.nfs.mountPath or default_mount_path(sd.metadata.name)
            return NetfsPoolConfig(name, path, spec.nfs.server, spec.nfs.export, "nfs", spec.nfs.version)
        return None

    def image_dir(self, sd: StorageDomain) -> str | None:
        pool = self.pool(sd)
        return pool.path if pool is not None else None

    def nfs(self, sd: StorageDomain) -> NfsExport | None:
        return None

    def disk_source(self, sd: StorageDomain, path: str) -> DiskSource:
        return FileSource(path)


@dataclass(frozen=True)
class LibnfsBackend:
    """NFS reached by QEMU's userspace client on every host (no kernel client, no pool): the server creates,
    grows, lists and deletes images over libnfs itself, and VMs get ``protocol='nfs'`` network disks."""

    type: str = "nfs"

    def unsupported(self, sd: StorageDomain) -> str | None:
        nfs = sd.spec.nfs
        if nfs is None:
            return "type nfs needs its nfs block"
        if nfs.version not in (None, "3"):
            return f"access qemu speaks NFSv3 only (QEMU's libnfs driver), not version {nfs.version}"
        return None

    def pool(self, sd: StorageDomain) -> PoolConfig | None:
        return None

    def image_dir(self, sd: StorageDomain) -> str | None:
        export = self.nfs(sd)
        return export.url("") if export is not None else None

    def nfs(self, sd: StorageDomain) -> NfsExport | None:
        nfs = sd.spec.nfs
        return NfsExport(nfs.server, nfs.export, nfs.version) if nfs is not None else None

    def disk_source(self, sd: StorageDomain, path: str) -> DiskSource:
        export = self.nfs(sd)
        assert export is not None
        return NetworkSource("nfs", export.server, posixpath.join(export.export, posixpath.basename(path)))


StorageBackend = PoolBackend | LibnfsBackend


def backend_for(sd: StorageDomain) -> StorageBackend:
    if sd.spec.nfs is not None and sd.spec.nfs.access == "qemu":
        return LibnfsBackend()
    return PoolBackend(sd.spec.type)
