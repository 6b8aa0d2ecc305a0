"""GlusterVolume: a GlusterFS volume declared in Git and managed through glusterd (create, start, options,
expand with new bricks). A StorageDomain of type gluster then mounts it on the hosts."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from specs.common import AbsolutePath, HostAddress, first_duplicate
from specs.errors import field_error
from specs.meta import Name, Resource, StatusBase, StrictModel

_OPTION = re.compile(r"^[a-z0-9][a-z0-9_.-]*\.[a-z0-9_.-]+$")


class GlusterBrick(StrictModel):
    """A brick: a directory on a server of the trusted storage pool."""

    host: HostAddress = Field(description="The brick's server, as the trusted pool knows it (never 127.0.0.1).")
    path: AbsolutePath = Field(description="Directory on that server, e.g. /bricks/vm0/b1.")

    @property
    def text(self) -> str:
        return f"{self.host}:{self.path}"


class GlusterVolumeSpec(StrictModel):
    """Desired state of a Gluster volume. Bricks are only ever added (expand), never removed by a spec."""

    cluster: Name = Field(description="Cluster whose StorageDomains use this volume.")
    bricks: tuple[GlusterBrick, ...] = Field(
        min_length=1, description="Bricks in order; with replica N each N consecutive bricks hold the same data."
    )
    replica: int = Field(default=1, ge=1, le=4, description="Copies of each file (1 = distribute only).")
    arbiter: bool = Field(
        default=False,
        description="The last brick of each replica set holds metadata only (replica 3 arbiter 1).",
    )
    options: dict[str, str] = Field(
        default_factory=dict, description="Volume options, e.g. {performance.cache-size: 64MB}."
    )
    force: bool = Field(
        default=False,
        description="Pass force to create and add-brick (bricks on a root filesystem, or several bricks of "
        "a replica set on one server).",
    )

    @field_validator("options")
    @classmethod
    def _options(cls, options: dict[str, str]) -> dict[str, str]:
        for key, value in options.items():
            if not _OPTION.match(key):
                raise ValueError(f"option {key!r}: expected a Gluster option name like performance.cache-size")
            if not value or any(c.isspace() for c in value) or value.startswith("/"):
                raise ValueError(
                    f"option {key}: value {value!r} must be one word and not a path (a spec cannot make the "
                    "servers read or write files)"
                )
        return options

    @model_validator(mode="after")
    def _layout(self) -> GlusterVolumeSpec:
        dup = first_duplicate(b.text for b in self.bricks)
        if dup is not None:
            raise field_error(f"bricks.{dup[0]}", f"brick {dup[1]} is listed twice")
        if len(self.bricks) % self.replica:
            raise field_error(
                "bricks", f"{len(self.bricks)} bricks do not make whole replica sets of {self.replica}"
            )
        if self.arbiter and self.replica != 3:
            raise field_error("arbiter", "arbiter needs replica 3 (two data bricks and one arbiter per set)")
        return self


class GlusterVolume(Resource):
    """A Gluster volume (``kind: GlusterVolume``); its name is the volume name."""

    kind: Literal["GlusterVolume"] = Field(description="Always GlusterVolume.")
    spec: GlusterVolumeSpec = Field(description="Desired state of the volume.")


class GlusterBrickStatus(StrictModel):
    brick: str = Field(description="host:path")
    online: bool = Field(description="The brick process runs.")
    port: int | None = Field(default=None, description="Its TCP port.")
    pid: int | None = Field(default=None, description="Its process id on its server.")


class GlusterVolumeStatus(StatusBase):
    """Observed state of a Gluster volume."""

    phase: Literal["Pending", "Started", "Stopped", "Failed", "Deleting"] | None = Field(
        default=None, description="Started = serving data."
    )
    volumeId: str | None = Field(default=None, description="Gluster's volume id.")
    type: str | None = Field(default=None, description="Distribute, Replicate, Distributed-Replicate, ...")
    bricks: tuple[GlusterBrickStatus, ...] = Field(default=(), description="Each brick and whether it is online.")
    options: dict[str, str] = Field(default_factory=dict, description="The options set from the spec, as applied.")
