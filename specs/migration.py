"""Migration: a one-shot request to live-migrate a VM (``virtplane migrate vm/x --to host``). Not for Git."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from specs.meta import Name, Resource, StatusBase, StrictModel


class MigrationSpec(StrictModel):
    """Desired migration."""

    vm: Name = Field(description="VirtualMachine to move.")
    targetHost: Name | None = Field(
        default=None, description="Destination; default: chosen by the scheduler."
    )
    ttlSeconds: int = Field(
        default=3600,
        ge=60,
        le=604800,
        description="Seconds the object is kept after it finished (60-604800).",
    )


class Migration(Resource):
    """A migration request (``kind: Migration``)."""

    kind: Literal["Migration"] = Field(description="Always Migration.")
    spec: MigrationSpec = Field(description="Desired migration.")


class MigrationStatus(StatusBase):
    """Progress of a migration."""

    phase: (
        Literal["Pending", "Scheduling", "Running", "PostCopy", "Succeeded", "Failed", "Aborted"] | None
    ) = Field(default=None, description="Lifecycle phase.")
    sourceHost: str | None = Field(default=None, description="Host the VM left.")
    targetHost: str | None = Field(default=None, description="Host the VM goes to.")
    startTime: datetime | None = Field(default=None, description="When data transfer started.")
    completionTime: datetime | None = Field(default=None, description="When it succeeded or failed.")
    dataTotal: int | None = Field(default=None, ge=0, description="Bytes to transfer (memory).")
    dataProcessed: int | None = Field(default=None, ge=0, description="Bytes transferred so far.")
    dataRemaining: int | None = Field(default=None, ge=0, description="Bytes still to transfer (QEMU's estimate).")
    percent: int | None = Field(default=None, ge=0, le=100, description="Progress of the transfer, 0-100.")
    downtimeMs: int | None = Field(
        default=None, ge=0, description="Guest pause at switch-over, as reported by QEMU."
    )
