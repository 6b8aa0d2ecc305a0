"""StorageDomain: where disk images live (a POSIX path, NFS, GlusterFS or a host-local directory)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from specs.common import AbsolutePath, HostAddress, first_duplicate
from specs.errors import field_error
from specs.meta import Labels, Name, Resource, StatusBase, StrictModel

StorageType = Literal["posix", "nfs", "gluster", "local"]


class MountSpec(StrictModel):
    """How hosts mount the filesystem at posix.path (omit when it is already mounted)."""

    source: str = Field(min_length=1, description="What to mount, e.g. 'nas1:/export/vms' or '/dev/sdb1'.")
    fsType: str = Field(min_length=1, description="Filesystem type, e.g. nfs4, glusterfs, cephfs, xfs.")
    options: str = Field(default="", description="Mount options, e.g. 'vers=4.2,noatime'.")


class PosixStorage(StrictModel):
    """A directory present on every host that sees the domain."""

    path: AbsolutePath = Field(description="Directory holding the images, e.g. /srv/virtplane/shared.")
    mount: MountSpec | None = Field(default=None, description="Mount it there first (optional).")


class NfsStorage(StrictModel):
    """An NFS export."""

    server: HostAddress = Field(description="NFS server address.")
    export: AbsolutePath = Field(description="Exported path on the server, e.g. /export/vms.")
    version: Literal["3", "4", "4.1", "4.2"] | None = Field(default=None, description="NFS version to use.")
    access: Literal["mount", "qemu"] = Field(
        default="mount",
        description="mount: a kernel NFS mount on each host (libvirt netfs pool); qemu: QEMU's userspace "
        "client (libnfs), no kernel client needed.",
    )


class GlusterStorage(StrictModel):
    """A GlusterFS volume."""

    servers: tuple[HostAddress, ...] = Field(
        min_length=1, description="Gluster servers (first is used first)."
    )
    volume: Name = Field(description="Gluster volume name.")
    access: Literal["mount", "gfapi"] = Field(
        default="mount",
        description="mount: FUSE mount on each host (fast); gfapi: QEMU's libgfapi (slow to open images).",
    )


class LocalStorage(StrictModel):
    """A directory on one host's local disk (lab, all-in-one)."""

    path: AbsolutePath = Field(description="Directory holding the images.")


class StorageDomainSpec(StrictModel):
    """Desired state of a storage domain. Set the block matching ``type`` and no other."""

    cluster: Name = Field(description="Cluster whose hosts use this domain.")
    type: StorageType = Field(description="posix, nfs, gluster or local; set the block of the same name.")
    posix: PosixStorage | None = Field(default=None, description="Settings for type posix.")
    nfs: NfsStorage | None = Field(default=None, description="Settings for type nfs.")
    gluster: GlusterStorage | None = Field(default=None, description="Settings for type gluster.")
    local: LocalStorage | None = Field(default=None, description="Settings for type local.")
    hosts: tuple[Name, ...] = Field(
        default=(),
        description="Hosts that see the domain; empty (and no hostSelector) = every host of the cluster.",
    )
    hostSelector: Labels = Field(
        default_factory=dict, description="Alternatively, the hosts whose labels include all of these."
    )
    shared: bool | None = Field(
        default=None,
        description="Every host sees the same files, so VMs live-migrate without copying storage. "
        "Default: true for posix, nfs and gluster; local domains are never shared.",
    )

    @model_validator(mode="after")
    def _one_block(self) -> StorageDomainSpec:
        blocks = {"posix": self.posix, "nfs": self.nfs, "gluster": self.gluster, "local": self.local}
        for name, block in blocks.items():
            if name != self.type and block is not None:
                raise field_error(
                    name, f"{name} block given but type is {self.type}; remove it or set type: {name}"
                )
        if blocks[self.type] is None:
            needs = {"posix": "path", "nfs": "server, export", "gluster": "servers, volume", "local": "path"}
            raise field_error("type", f"type {self.type} needs a {self.type} block ({needs[self.type]})")
        if self.hosts and self.hostSelector:
            raise field_error("hostSelector", "set hosts or hostSelector, not both")
        dup = first_duplicate(self.hosts)
        if dup is not None:
            raise field_error(f"hosts.{dup[0]}", f"host {dup[1]!r} is listed twice")
        if self.type == "local":
            if self.shared:
                raise field_error(
                    "shared", "a local domain cannot be shared; use posix for a shared directory"
                )
            if len(self.hosts) != 1:
                raise field_error("hosts", "a local domain lives on one host: set hosts: [<host name>]")
        return self

    @property
    def is_shared(self) -> bool:
        """Effective ``shared``: the user's value, else true unless the domain is local."""
        return self.shared if self.shared is not None else self.type != "local"


class StorageDomain(Resource):
    """A storage domain (``kind: StorageDomain``)."""

    kind: Literal["StorageDomain"] = Field(description="Always StorageDomain.")
    spec: StorageDomainSpec = Field(description="Desired state of the storage domain.")


class StorageDomainStatus(StatusBase):
    """Observed state of a storage domain."""

    phase: Literal["Ready", "Degraded", "Unavailable"] | None = Field(
        default=None, description="Ready on all its hosts, on some (Degraded), or on none."
    )
    capacity: int | None = Field(default=None, ge=0, description="Total size in bytes.")
    available: int | None = Field(default=None, ge=0, description="Free space in bytes.")
    readyHosts: tuple[str, ...] = Field(default=(), description="Hosts where the domain is active.")
    failedHosts: tuple[str, ...] = Field(default=(), description="Hosts where it could not be activated.")
