"""Identity and permission checks, behind one seam.

Every API request goes through an ``Authenticator`` (who is this?) and an ``Authorizer`` (may they do
this?). The server wires ``controller.api.sessions.SessionAuthenticator`` (static token, login sessions,
service-account tokens) and ``controller.api.rbac.RbacAuthorizer`` (roles bound to users, groups and
service accounts, per cluster); ``StaticTokenAuthenticator`` and ``AllowAdmins`` alone are the simplest
pair (one admin token, nothing else).
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
    def allowed(self, who: Identity, verb: Verb, kind: str | None, cluster: str | None = None) -> bool: ...

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


class AllowAdmins:
    """Everything for members of ``virtplane:admins``; nothing for anyone else."""

    def allowed(self, who: Identity, verb: Verb, kind: str | None, cluster: str | None = None) -> bool:
        return "virtplane:admins" in who.groups

    def allows_everything(self, who: Identity) -> bool:
        return "virtplane:admins" in who.groups

    def clusters_allowed(self, who: Identity, verb: Verb, kind: str) -> frozenset[str] | None:
        return None if "virtplane:admins" in who.groups else frozenset()
