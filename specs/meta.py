"""Object metadata and the generic resource envelope shared by every kind.

Every object is ``{apiVersion, kind, metadata, spec}``; ``status`` is a separate model stored
under its own key and written only by controllers. Pure data: no I/O.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, NewType

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

API_VERSION: Final = "virtplane.io/v1"

ObjectName = NewType("ObjectName", str)
KindName = NewType("KindName", str)

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def check_dns1123(value: str) -> str:
    """A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, <= 63."""
    if len(value) > 63:
        raise ValueError(f"must be at most 63 characters (DNS-1123 label), got {len(value)}")
    if not _DNS1123.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_label_key(key: str) -> str:
    """A label key: ``[dns-prefix/]name``, name of [-A-Za-z0-9_.] starting and ending alphanumeric."""
    name = key.rsplit("/", 1)[-1]
    if len(key) > 253 or len(name) > 63 or not _LABEL_KEY.match(key):
        raise ValueError(
            f"label key {key!r} is invalid (expected [prefix/]name of [-A-Za-z0-9_.], name <= 63)"
        )
    return key


def check_label_value(value: str) -> str:
    """A label value: empty, or <= 63 of [-A-Za-z0-9_.] starting and ending alphanumeric."""
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ValueError(f"label value {value!r} is invalid (expected <= 63 of [-A-Za-z0-9_.])")
    return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        try:
            check_label_value(value)
        except ValueError as exc:
            raise ValueError(f"{exc} (label {key!r})") from None
    return labels


Name = Annotated[
    str,
    AfterValidator(check_dns1123),
    WithJsonSchema({"type": "string", "pattern": _DNS1123.pattern, "maxLength": 63}),
]
Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class StrictModel(BaseModel):
    """Base of every user-facing model: unknown fields are errors, values are immutable. Validators are
    built on first use (``defer_build``; ``specs.kinds.build_models`` builds them all at once)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, field_title_generator=lambda name, _: name,
        defer_build=True,
    )


class OwnerReference(StrictModel):
    kind: str = Field(description="Kind of the owning object.")
    name: str = Field(description="Name of the owning object.")
    uid: str = Field(description="uid of the owning object (guards against a re-created namesake).")


class ObjectMeta(StrictModel):
    """Metadata. Users set name, labels, annotations (and optionally resourceVersion as a
    precondition); the server sets everything else."""

    name: Name = Field(description="DNS-1123 name, unique per kind.")
    labels: Labels = Field(
        default_factory=dict,
        description="Key/value labels used by selectors (e.g. placement.hostSelector, virtplane get -l).",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form notes for people and tools; never interpreted by controllers.",
    )
    # Set by the server.
    uid: str | None = Field(default=None, description="Set by the server: unique id of this incarnation.")
    generation: int | None = Field(
        default=None, ge=1, description="Set by the server: increases by one on every spec change."
    )
    resourceVersion: str | None = Field(
        default=None, pattern=r"^[0-9]{1,19}$",
        description="etcd mod_revision of the spec key (a whole number); a precondition when given.",
    )
    creationTimestamp: datetime | None = Field(default=None, description="Set by the server: creation time.")
    deletionTimestamp: datetime | None = Field(
        default=None, description="Set by the server: deletion was requested; finalizers are running."
    )
    finalizers: tuple[str, ...] = Field(
        default=(), description="Set by the server: controllers that must finish tear-down before removal."
    )
    correlationId: str | None = Field(
        default=None, description="Id of the API write that made this generation."
    )
    source: str | None = Field(
        default=None, description="apply --source that last wrote this object (prune)."
    )
    updatedBy: str | None = Field(
        default=None, description="Set by the server: who made the write of correlationId (user or service account)."
    )
    ownerReferences: tuple[OwnerReference, ...] = Field(
        default=(), description="Set by the server: objects this one belongs to (e.g. VMs of a pool)."
    )

    SERVER_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "uid",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "finalizers",
            "correlationId",
            "source",
            "updatedBy",
            "ownerReferences",
        }
    )


class Condition(StrictModel):
    """A status condition, as in Kubernetes: type, status True/False/Unknown, reason, message."""

    type: str = Field(description="Condition type, e.g. Ready, RestartRequired, Scheduled.")
    status: Literal["True", "False", "Unknown"] = Field(description="Whether the condition holds.")
    reason: str = Field(default="", description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable explanation.")
    lastTransitionTime: datetime | None = Field(default=None, description="When status last changed.")
    observedGeneration: int | None = Field(
        default=None, description="Spec generation this was computed from."
    )


class Resource(StrictModel):
    """Envelope of every kind. Subclasses narrow ``kind`` to a Literal and ``spec`` to their spec model."""

    apiVersion: Literal["virtplane.io/v1"] = Field(default=API_VERSION, description="Always virtplane.io/v1.")
    kind: str = Field(description="Kind of object, e.g. VirtualMachine.")
    metadata: ObjectMeta = Field(description="Name, labels and annotations; the rest is set by the server.")
    spec: Any = Field(description="Desired state, written only by users.")


class StatusBase(StrictModel):
    """Common status fields; each kind's status model extends it."""

    observedGeneration: int | None = Field(
        default=None, description="metadata.generation of the spec this status was computed from."
    )
    phase: str | None = Field(default=None, description="Coarse lifecycle phase.")
    conditions: tuple[Condition, ...] = Field(
        default=(), description="Detailed observations, Kubernetes-style."
    )
    correlationId: str | None = Field(
        default=None, description="Correlation id of the write whose reconciliation produced this status."
    )
