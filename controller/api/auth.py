"""Identity and permission checks, behind one seam.

Every API request goes through an ``Authenticator`` (who is this?) and an ``Authorizer`` (may they do
this?). Today there is one static bearer token (the server's admin token); directory (LDAP) login and
role bindings plug in here later without touching the routes.
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
    def allowed(self, who: Identity, verb: Verb, kind: str | None) -> bool: ...


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


class AllowAdmins:
    """Everything for members of ``virtplane:admins``; nothing for anyone else."""

    def allowed(self, who: Identity, verb: Verb, kind: str | None) -> bool:
        return "virtplane:admins" in who.groups
