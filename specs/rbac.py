"""Access control objects: ``Role`` (what may be done) and ``RoleBinding`` (who gets a role, where).

A Role lists rules; a rule names kinds and verbs (``"*"`` for all). Three roles are built in and need no
object: ``admin`` (everything), ``operator`` (every verb on VMs, pools, disks, snapshots and migrations;
read everything else) and ``viewer`` (read everything). A RoleBinding gives one role to directory users,
directory groups or service accounts, in some clusters (``clusters``) or everywhere (no ``clusters``).

The API server reads these objects (``controller/api/rbac.py``); their controllers only report whether a
binding's role exists.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from specs.meta import Name, Resource, StatusBase, StrictModel

Verb = Literal["get", "list", "watch", "create", "update", "delete"]
VERBS: tuple[Verb, ...] = ("get", "list", "watch", "create", "update", "delete")
READ_VERBS: tuple[Verb, ...] = ("get", "list", "watch")

# Kinds a Role may name besides the object kinds of specs.kinds: what the API guards that is not an object.
PSEUDO_KINDS: tuple[str, ...] = ("Event", "AuditRecord", "ApiToken")

BUILTIN_ROLES: tuple[str, ...] = ("admin", "operator", "viewer")


class PolicyRule(StrictModel):
    """Verbs allowed on kinds."""

    kinds: tuple[str, ...] = Field(
        min_length=1,
        description="Kinds (e.g. VirtualMachine, Disk, Event, AuditRecord, ApiToken) or '*' for every kind.",
    )
    verbs: tuple[Verb | Literal["*"], ...] = Field(
        min_length=1, description="get, list, watch, create, update, delete, or '*' for all of them."
    )

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        from specs.kinds import KINDS  # here, not at the top: specs.kinds imports this module

        known = (*KINDS, *PSEUDO_KINDS)
        for kind in kinds:
            if kind != "*" and kind not in known:
                raise ValueError(f"unknown kind {kind!r}; expected '*' or one of: {', '.join(known)}")
        return kinds


class RoleSpec(StrictModel):
    """What a custom role allows. Kind names are checked against the known kinds when applied."""

    description: str = Field(default="", description="For people.")
    rules: tuple[PolicyRule, ...] = Field(min_length=1, description="What the role allows (a union).")


class Role(Resource):
    """A custom role (``kind: Role``). The names admin, operator and viewer are built in and reserved."""

    kind: Literal["Role"] = Field(description="Always Role.")
    spec: RoleSpec = Field(description="Rules of the role.")

    @model_validator(mode="after")
    def _not_builtin(self) -> Role:
        if self.metadata.name in BUILTIN_ROLES:
            raise ValueError(
                f"role {self.metadata.name!r} is built in ({', '.join(BUILTIN_ROLES)}); pick another name"
            )
        return self


class RoleStatus(StatusBase):
    """Role status (set by its controller)."""


class Subject(StrictModel):
    """Who a binding is for: a directory user (by login name), a directory group (by cn), or a service
    account (the name its API tokens were created for)."""

    kind: Literal["User", "Group", "ServiceAccount"] = Field(description="User, Group or ServiceAccount.")
    name: str = Field(min_length=1, max_length=256, description="Login name, group cn, or service account name.")


class RoleBindingSpec(StrictModel):
    """Gives ``role`` to ``subjects`` in ``clusters`` (none: in every cluster and for global objects)."""

    role: str = Field(min_length=1, description="admin, operator, viewer, or the name of a Role object.")
    subjects: tuple[Subject, ...] = Field(min_length=1, description="Users, groups and service accounts.")
    clusters: tuple[Name, ...] = Field(
        default=(),
        description="Clusters where the role applies; empty: everywhere, including objects of no cluster.",
    )

    @field_validator("clusters")
    @classmethod
    def _no_duplicates(cls, clusters: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(clusters)) != len(clusters):
            raise ValueError("a cluster is listed twice")
        return clusters


class RoleBinding(Resource):
    """A role binding (``kind: RoleBinding``)."""

    kind: Literal["RoleBinding"] = Field(description="Always RoleBinding.")
    spec: RoleBindingSpec = Field(description="Role, subjects and clusters.")


class RoleBindingStatus(StatusBase):
    """Whether the binding's role exists (set by its controller)."""
