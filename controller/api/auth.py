"""Identity and permission checks, behind one seam.

Every API request goes through an ``Authenticator`` (who is this?) and an ``Authorizer`` (may they do
this?). The server wires ``controller.api.sessions.SessionAuthenticator`` (static token, login sessions,
service-account tokens) and ``controller.api.rbac.RbacAuthorizer`` (roles bound to users, groups and
service accounts, per cluster); ``StaticTokenAuthenticator`` and ``AllowAdmins`` alone are the simplest
pair (one admin token, nothing else).

Order, for every request under ``/api/v1`` but the login (and ``/metrics`` unless the server runs
``--metrics-public``): authenticate from the headers alone (401 before a byte of the body is read; a
session or API token costs one etcd read), cap the body (413), parse it, then ask :func:`authorize` for
each object written with the kind, name and cluster *from the body* (never only from the URL: a
``kind: Host`` posted to ``/api/v1/clusters`` is a Host; the cluster is found through the object's
references, ``controller.api.rbac.object_cluster``). A multi-object apply with any forbidden object is
refused whole (403 naming each).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Literal, Protocol

Verb = Literal["get", "list", "watch", "create", "update", "delete"]


@dataclass(frozen=True)
class Identity:
    name: str
    groups: frozenset[str] = field(default_factory=frozenset)
    credential: str = "static"  # "static", "session:<id>", "token:<id>": which credential proved it


class Authenticator(Protocol):
    async def authenticate(self, authorization: str | None) -> Identity | None: ...


class Authorizer(Protocol):
    def allowed(
        self, who: Identity, verb: Verb, kind: str | None, cluster: str | None = None, name: str | None = None
    ) -> bool: ...

    def allows_everything(self, who: Identity) -> bool: ...

    def clusters_allowed(self, who: Identity, verb: Verb, kind: str) -> frozenset[str] | None:
        """Where ``who`` may do ``verb`` on ``kind``: None everywhere, else those clusters (maybe none)."""
        ...


class StaticTokenAuthenticator:
    """Accepts ``Authorization: Bearer <token>`` for one token, mapped to one identity."""

    def __init__(self, token: str, identity: Identity | None = None) -> None:
        self._token = token.encode()
        self._identity = identity or Identity("admin", frozenset({"virtplane:admins"}))

    def match(self, authorization: str | None) -> Identity | None:
        if not authorization:
            return None
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None
        if hmac.compare_digest(credential.strip().encode(), self._token):
            return self._identity
        return None

    async def authenticate(self, authorization: str | None) -> Identity | None:
        return self.match(authorization)


def authorize(
    authz: Authorizer, principal: Identity, verb: Verb, kind: str | None, name: str | None = None,
    cluster: str | None = None,
) -> bool:
    """The one authorization decision: may ``principal`` do ``verb`` on ``kind``/``name`` in ``cluster``?
    ``name`` is None for collection requests (list, watch), ``cluster`` None for objects outside any
    cluster (global) or when unknown. The body is the server's Authorizer: the RBAC index
    (``controller.api.rbac``), whose rules are per kind, verb and cluster."""
    return authz.allowed(principal, verb, kind, cluster, name=name)


class AllowAdmins:
    """The simplest Authorizer: members of ``virtplane:admins`` may do everything, nobody else anything."""

    def allowed(
        self, who: Identity, verb: Verb, kind: str | None, cluster: str | None = None, name: str | None = None
    ) -> bool:
        return "virtplane:admins" in who.groups

    def allows_everything(self, who: Identity) -> bool:
        return "virtplane:admins" in who.groups

    def clusters_allowed(self, who: Identity, verb: Verb, kind: str) -> frozenset[str] | None:
        return None if "virtplane:admins" in who.groups else frozenset()
