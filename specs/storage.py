"""StorageDomain: where disk images live (a POSIX path, NFS, GlusterFS or a host-local directory)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from specs.common import AbsolutePath, HostAddress, check_absolute_path, check_host_address, first_duplicate
from specs.errors import field_error
from specs.meta import Labels, Name, Resource, StatusBase, StrictModel

StorageType = Literal["posix", "nfs", "gluster", "local"]



def _check_mount_options(value: str) -> str:
    for option in filter(None, (o.strip() for o in value.split(","))):
        if "/" in option or not re.fullmatch(r"[A-Za-z0-9_.=:-]+", option):
            raise ValueError(
                f"mount option {option!r} is refused: options may not name a file or hold other characters "
                "than letters, digits and _.=:- (a spec cannot make hosts read or write their files)"
            )
    return value


def _check_mount_source(value: str) -> str:
    server, sep, path = value.rpartition(":/")
    if not sep or not server or any(c.isspace() for c in value):
        raise ValueError(
            f"expected 'server:/path' (e.g. nas1:/export/vms, or gluster1:/volume), got {value!r}; block "
            "devices are not mounted from specs: mount them on the hosts and omit mount"
        )
    check_host_address(server)
    check_absolute_path("/" + path)
    return value


class MountSpec(StrictModel):
    """How hosts mount the filesystem at posix.path (omit when it is already mounted).

    libvirt mounts it on each host through a ``netfs`` pool when the domain is activated there.
    """

    source: Annotated[str, AfterValidator(_check_mount_source)] = Field(
        description="What to mount: 'server:/export' (nfs, nfs4, glusterfs as 'server:/volume'), e.g. "
        "'nas1:/export/vms'. Block devices are not mounted from specs.",
    )
    fsType: Literal["nfs", "nfs4", "glusterfs", "cifs"] = Field(
        description="Filesystem type: nfs, nfs4, glusterfs or cifs."
    )
    options: Annotated[str, AfterValidator(_check_mount_options)] = Field(
        default="", description="Mount options, comma separated, e.g. 'noatime,soft'. Options naming a path "
        "are refused.",
    )

    @property
    def server(self) -> str:
        return self.source.rsplit(":/", 1)[0]

    @property
    def remote_path(self) -> str:
        return "/" + self.source.rsplit(":/", 1)[1]

    @property
    def option_list(self) -> tuple[str, ...]:
        return tuple(filter(None, (o.strip() for o in self.options.split(","))))


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
        "client (libnfs), no kernel client needed: the server creates images over NFS itself.",
    )
    mountPath: AbsolutePath | None = Field(
        default=None,
        description="Where hosts mount it (access mount); default /var/lib/virtplane/mnt/<domain name>.",
    )


class GlusterStorage(StrictModel):
    """A GlusterFS volume."""

    servers: tuple[HostAddress, ...] = Field(
        min_length=1, description="Gluster servers: the first one serves the volume file, the others are "
        "backup volfile servers for the mount."
    )
    volume: Name = Field(description="Gluster volume name.")
    access: Literal["mount", "gfapi"] = Field(
        default="mount",
        description="mount: FUSE mount on each host (fast); gfapi: QEMU's libgfapi (not served yet: it "
        "costs ~10 s per image open).",
    )
    mountPath: AbsolutePath | None = Field(
        default=None, description="Where hosts mount the volume; default /var/lib/virtplane/mnt/<domain name>."
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


class StorageHostState(StrictModel):
    """Whether one host reaches the domain, and why not."""

    host: str = Field(description="Host name.")
    reachable: bool = Field(description="The host sees the domain (its pool is active, or its server answers).")
    reason: str = Field(description="Active, HostNotReady, MountFailed, ServerUnreachable, ...")
    message: str = Field(default="", description="Details for people.")


class StorageDomainStatus(StatusBase):
    """Observed state of a storage domain."""

    phase: Literal["Ready", "Degraded", "Unavailable"] | None = Field(
        default=None, description="Ready on all its hosts, on some (Degraded), or on none."
    )
    capacity: int | None = Field(default=None, ge=0, description="Total size in bytes.")
    available: int | None = Field(default=None, ge=0, description="Free space in bytes.")
    readyHosts: tuple[str, ...] = Field(default=(), description="Hosts where the domain is active.")
    failedHosts: tuple[str, ...] = Field(default=(), description="Hosts where it could not be activated.")
    hosts: tuple[StorageHostState, ...] = Field(
        default=(), description="Per host: reachable or not, and why (hosts that cannot reach it get no VMs "
        "that use it)."
    )
