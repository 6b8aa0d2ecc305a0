"""Events: what happened to an object, when, why, and under which correlation id.

Stored by the controller under ``/virtplane/events/<time>-<id>`` with a lease so old events expire.
Pure data: no I/O.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from specs.meta import StrictModel

_CAMEL = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def _check_reason(value: str) -> str:
    if not _CAMEL.match(value):
        raise ValueError(f"reason {value!r} must be CamelCase, e.g. 'MigrationStarted'")
    return value


Reason = Annotated[str, AfterValidator(_check_reason)]


class EventMeta(StrictModel):
    """Set by the store on emit: ``name`` is the ``<time>-<id>`` key suffix."""

    name: str | None = None
    uid: str | None = None


class InvolvedObject(StrictModel):
    kind: str
    name: str
    uid: str | None = None


class Event(StrictModel):
    """One event. ``count`` and the two timestamps allow repeated events to be folded."""

    apiVersion: Literal["virtplane.io/v1"] = "virtplane.io/v1"
    kind: Literal["Event"] = "Event"
    metadata: EventMeta = Field(default_factory=EventMeta)
    type: Literal["Normal", "Warning"] = "Normal"
    reason: Reason
    message: str = ""
    involvedObject: InvolvedObject
    correlationId: str | None = None
    user: str | None = Field(default=None, description="Who made the write this event follows from.")
    source: str = Field(default="", description="Component that emitted it, e.g. 'vm-controller'.")
    firstTimestamp: datetime | None = None
    lastTimestamp: datetime | None = None
    count: int = Field(default=1, ge=1)
