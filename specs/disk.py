"""Disk: an image in a storage domain (empty, cloned, imported, from a snapshot) or a direct LUN.

A Disk not attached to any VirtualMachine is a floating disk.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from specs.common import AbsolutePath
from specs.errors import field_error
from specs.meta import Name, Resource, StatusBase, StrictModel
from specs.quantity import Quantity, parse_quantity

DiskFormat = Literal["qcow2", "raw"]


class EmptySource(StrictModel):
    """A new blank disk of spec.size."""


class CloneSource(StrictModel):
    """A clone of another Disk or of an image file (a template)."""

    disk: Name | None = Field(default=None, description="Disk to clone (set disk or image).")
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Image file to clone: an absolute path, or a path relative to the storage domain.",
    )
    mode: Literal["overlay", "copy"] = Field(
        default="overlay",
        description="overlay: a qcow2 overlay on the source (instant, the source must stay); copy: a full "
        "independent copy.",
    )

    @model_validator(mode="after")
    def _one(self) -> CloneSource:
        if (self.disk is None) == (self.image is None):
            raise field_error("disk", "clone needs exactly one of disk (a Disk name) or image (a file path)")
        return self


class ImportSource(StrictModel):
    """An existing image file converted into this disk."""

    path: str = Field(min_length=1, description="Image file to import (absolute, or relative to the domain).")
    format: Literal["qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc"] | None = Field(
        default=None, description="Format of that file; default: detected (safer to say it)."
    )


class SnapshotSource(StrictModel):
    """A new disk holding the content of one disk of a Snapshot."""

    snapshot: Name = Field(description="Snapshot to copy from.")
    disk: Name = Field(description="Which disk of that snapshot.")


class DiskSource(StrictModel):
    """Where the initial content comes from: exactly one of empty, clone, import, snapshot."""

    model_config = ConfigDict(serialize_by_alias=True)

    empty: EmptySource | None = Field(default=None, description="A blank disk of spec.size: `empty: {}`.")
    clone: CloneSource | None = Field(default=None, description="Clone of a Disk or template image.")
    import_: ImportSource | None = Field(default=None, alias="import", description="Import of an image file.")
    snapshot: SnapshotSource | None = Field(default=None, description="Content of a disk of a Snapshot.")

    @model_validator(mode="after")
    def _exactly_one(self) -> DiskSource:
        given = [
            name for name in ("empty", "clone", "import_", "snapshot") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            names = ", ".join(g.rstrip("_") for g in given) or "none"
            raise field_error("", f"set exactly one of empty, clone, import, snapshot (got {names})")
        return self

    @property
    def kind(self) -> Literal["empty", "clone", "import", "snapshot"]:
        if self.clone is not None:
            return "clone"
        if self.import_ is not None:
            return "import"
        if self.snapshot is not None:
            return "snapshot"
        return "empty"


class IscsiLun(StrictModel):
    """An iSCSI target LUN."""

    portal: str = Field(
        pattern=r"^[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?$",
        description="Target portal, host[:port], e.g. 10.0.0.20:3260.",
    )
    iqn: str = Field(
        pattern=r"^(iqn\.[0-9]{4}-[0-9]{2}\.[^\s]+|eui\.[0-9A-Fa-f]{16})$",
        description="Target name, e.g. iqn.2024-01.com.example:storage.lun1.",
    )
    lun: int = Field(default=0, ge=0, le=16383, description="LUN number on the target.")
    chapUsername: str | None = Field(
        default=None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._:@-]+$",
        description="CHAP user name (set with chapSecret).",
    )
    chapSecret: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$",
        description="CHAP password by reference: the name of a file in the server's secrets directory "
        "(`virtplane server --secrets-dir`), mode 0600, password on its first line. Never stored or shown.",
    )

    @model_validator(mode="after")
    def _chap_pair(self) -> IscsiLun:
        if (self.chapUsername is None) != (self.chapSecret is None):
            missing = "chapSecret" if self.chapSecret is None else "chapUsername"
            raise field_error(missing, "CHAP needs both chapUsername and chapSecret (or neither)")
        return self

    @property
    def host(self) -> str:
        """The portal's host (brackets of an IPv6 address removed)."""
        host, sep, port = self.portal.rpartition(":")
        if not sep or not port.isdigit() or (host.count(":") and not host.endswith("]")):
            return self.portal.strip("[]")
        return host.strip("[]")

    @property
    def port(self) -> int:
        host, sep, port = self.portal.rpartition(":")
        if not sep or not port.isdigit() or (host.count(":") and not host.endswith("]")):
            return 3260
        return int(port)


class LunSource(StrictModel):
    """A direct LUN passed through to the VM: an iSCSI LUN or a host block device."""

    iscsi: IscsiLun | None = Field(default=None, description="An iSCSI LUN (set iscsi or blockPath).")
    blockPath: AbsolutePath | None = Field(
        default=None, description="A block device present on every host, e.g. /dev/disk/by-id/wwn-0x5000..."
    )

    @model_validator(mode="after")
    def _one(self) -> LunSource:
        if (self.iscsi is None) == (self.blockPath is None):
            raise field_error("", "lun needs exactly one of iscsi or blockPath")
        return self


class DiskSpec(StrictModel):
    """Desired state of a disk: an image (storageDomain, size, format, source) or a direct LUN (lun)."""

    storageDomain: Name | None = Field(
        default=None, description="Storage domain holding the image (not for lun)."
    )
    size: Quantity | None = Field(
        default=None,
        description="Virtual size, e.g. 20Gi. Required for empty disks; for clones it may only grow "
        "the source.",
    )
    format: DiskFormat | None = Field(
        default=None, description="Image format: qcow2 (default; thin, snapshots, overlays) or raw."
    )
    source: DiskSource | None = Field(default=None, description="Initial content; default: empty.")
    lun: LunSource | None = Field(default=None, description="A direct LUN instead of an image.")
    shareable: bool = Field(
        default=False,
        description="May be attached to several VMs at once (clustered filesystems); needs raw.",
    )
    reclaimPolicy: Literal["Delete", "Retain"] | None = Field(
        default=None,
        description="When the Disk object is deleted: Delete the image (default) or Retain it. A LUN is "
        "never deleted.",
    )

    @model_validator(mode="after")
    def _rules(self) -> DiskSpec:
        if self.lun is not None:
            for name in ("storageDomain", "size", "format", "source"):
                if getattr(self, name) is not None:
                    raise field_error(name, f"a lun disk has no {name}: remove it (or remove lun)")
            if self.reclaimPolicy == "Delete":
                raise field_error(
                    "reclaimPolicy", "a lun is never deleted: use reclaimPolicy Retain or omit it"
                )
            return self
        if self.storageDomain is None:
            raise field_error("storageDomain", "required field is missing (the storage domain of the image)")
        kind = self.source.kind if self.source is not None else "empty"
        if kind == "empty":
            if self.size is None:
                raise field_error("size", "an empty disk needs size, e.g. 20Gi")
            if parse_quantity(self.size) == 0:
                raise field_error("size", "size must be greater than 0")
        clone = self.source.clone if self.source is not None else None
        if clone is not None and clone.mode == "overlay" and self.format == "raw":
            raise field_error("format", "a clone with mode overlay is qcow2; use format qcow2 or mode copy")
        if self.shareable and self.effective_format != "raw":
            raise field_error("format", "a shareable disk must be format raw")
        return self

    @property
    def effective_format(self) -> DiskFormat | None:
        """Image format after defaults (None for a lun)."""
        if self.lun is not None:
            return None
        return self.format or "qcow2"

    @property
    def size_bytes(self) -> int | None:
        return None if self.size is None else parse_quantity(self.size)


class Disk(Resource):
    """A disk (``kind: Disk``)."""

    kind: Literal["Disk"] = Field(description="Always Disk.")
    spec: DiskSpec = Field(description="Desired state of the disk.")


class DiskStatus(StatusBase):
    """Observed state of a disk."""

    phase: Literal["Pending", "Creating", "Ready", "Failed", "Deleting"] | None = Field(
        default=None, description="Lifecycle phase of the image."
    )
    path: str | None = Field(default=None, description="Image path (or source URL) as hosts see it.")
    capacity: int | None = Field(default=None, ge=0, description="Virtual size in bytes.")
    allocation: int | None = Field(default=None, ge=0, description="Bytes actually used on storage.")
    format: str | None = Field(default=None, description="Format reported by qemu-img.")
    backingPath: str | None = Field(default=None, description="Backing image of an overlay clone.")
    attachedTo: tuple[str, ...] = Field(
        default=(), description="VMs the disk is attached to (empty = floating)."
    )
