"""Snapshot: a live snapshot of a VM's disks, optionally with its memory state."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from specs.common import first_duplicate
from specs.errors import field_error
from specs.meta import Name, Resource, StatusBase, StrictModel


class SnapshotSpec(StrictModel):
    """Desired state of a snapshot. Deleting the object deletes the libvirt snapshot."""

    vm: Name = Field(description="VirtualMachine to snapshot.")
    memory: bool = Field(
        default=False, description="Include memory state (the VM resumes exactly where it was on revert)."
    )
    description: str = Field(default="", max_length=1024, description="Free text shown in listings.")
    disks: tuple[Name, ...] | None = Field(
        default=None, description="Only these Disks of the VM; default: all of its disks."
    )

    @model_validator(mode="after")
    def _disks(self) -> SnapshotSpec:
        if self.disks is not None:
            if not self.disks:
                raise field_error("disks", "disks is empty: list at least one Disk, or omit disks for all")
            dup = first_duplicate(self.disks)
            if dup is not None:
                raise field_error(f"disks.{dup[0]}", f"disk {dup[1]!r} is listed twice")
            if self.memory:
                raise field_error(
                    "disks", "a snapshot with memory covers every disk: omit disks or set memory: false"
                )
        return self


class Snapshot(Resource):
    """A VM snapshot (``kind: Snapshot``)."""

    kind: Literal["Snapshot"] = Field(description="Always Snapshot.")
    spec: SnapshotSpec = Field(description="Desired state of the snapshot.")


class RevertStatus(StrictModel):
    """Outcome of the last `virtplane snapshot revert` (the virtplane.io/revert-requested annotation)."""

    requested: str = Field(description="Value of the revert-requested annotation this outcome answers.")
    phase: Literal["Reverting", "Succeeded", "Failed"] = Field(description="Where the revert is.")
    time: datetime | None = Field(default=None, description="When the revert finished.")
    seconds: float | None = Field(default=None, ge=0, description="How long libvirt took to revert.")
    message: str = Field(default="", description="What happened (the error on failure).")


class SnapshotStatus(StatusBase):
    """Observed state of a snapshot."""

    phase: Literal["Pending", "Creating", "Ready", "Failed", "Deleting"] | None = Field(
        default=None, description="Lifecycle phase."
    )
    creationTime: datetime | None = Field(default=None, description="When libvirt took the snapshot.")
    libvirtName: str | None = Field(default=None, description="Name of the libvirt snapshot.")
    disks: tuple[str, ...] = Field(default=(), description="Disks included.")
    memoryPath: str | None = Field(default=None, description="File holding the memory state, if any.")
    memory: bool | None = Field(default=None, description="Whether the memory state is included.")
    host: str | None = Field(default=None, description="Host whose libvirt holds the snapshot.")
    size: int | None = Field(
        default=None, ge=0, description="Bytes of saved memory state (internal snapshots share disk clusters)."
    )
    lastRevert: RevertStatus | None = Field(default=None, description="Outcome of the last revert request.")
