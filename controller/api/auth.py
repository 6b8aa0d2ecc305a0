"""Identity and permission checks, behind one seam.

Every API request goes through an ``Authenticator`` (who is this?) and an ``Authorizer`` (may they do
this?). Today there is one static bearer token (the server's admin token); directory (LDAP) login and
role bindings plug in here later without touching the routes.

Order, for every request under ``/api/v1`` (and ``/metrics`` unless the server runs ``--metrics-public``):
authenticate from the headers alone (401 before a byte of the body is read), cap the body (413), parse it,
then ask :func:`authorize` once per object with the kind, name and cluster *from the body* (never only
from the URL: a ``kind: Host`` posted to ``/api/v1/clusters`` is a Host).
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


class Authenticator(Protocol):
    def authenticate(self, authorization: str | None) -> Identity | None: ...


class Authorizer(Protocol):
    def allowed(
        self, who: Identity, verb: Verb, kind: str | None, name: str | None = None, cluster: str | None = None
    ) -> bool: ...


class StaticTokenAuthenticator:
    """Accepts ``Authorization: Bearer <token>`` for one token, mapped to one identity."""

    def __init__(self, token: str, identity: Identity | None = None) -> None:
        self._token = token.encode()
        self._identity = identity or Identity("admin", frozenset({"virtplane:admins"}))

    def authenticate(self, authorization: str | None) -> Identity | None:
        if not authorization:
            return None
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None
        if hmac.compare_digest(credential.strip().encode(), self._token):
            return self._identity
        return None


def authorize(
    principal: Identity, verb: Verb, kind: str | None, name: str | None = None, cluster: str | None = None
) -> bool:
    """The one authorization decision: may ``principal`` do ``verb`` on ``kind``/``name`` in ``cluster``?
    ``name`` is None for collection requests (list, watch), ``cluster`` None for objects outside any
    cluster or when unknown. Today: members of ``virtplane:admins`` may do everything, nobody else anything;
    role bindings (RBAC) replace this body."""
    return "virtplane:admins" in principal.groups


class AllowAdmins:
    """The default Authorizer: :func:`authorize`."""

    def allowed(
        self, who: Identity, verb: Verb, kind: str | None, name: str | None = None, cluster: str | None = None
    ) -> bool:
        return authorize(who, verb, kind, name, cluster)
