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


class SnapshotStatus(StatusBase):
    """Observed state of a snapshot."""

    phase: Literal["Pending", "Creating", "Ready", "Failed", "Deleting"] | None = Field(
        default=None, description="Lifecycle phase."
    )
    creationTime: datetime | None = Field(default=None, description="When libvirt took the snapshot.")
    libvirtName: str | None = Field(default=None, description="Name of the libvirt snapshot.")
    disks: tuple[str, ...] = Field(default=(), description="Disks included.")
    memoryPath: str | None = Field(default=None, description="File holding the memory state, if any.")
