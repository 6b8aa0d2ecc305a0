"""Who is calling: the static token, a login session, or a service account's API token.

``SessionAuthenticator.authenticate(header)`` tries, in order::

    the server's static token        -> Identity("admin", {virtplane:admins}), credential "static"
    vps_... (a login session)        -> Identity(user, directory groups), credential "session:<id>"
    vpt_... (a service account token)-> Identity("serviceaccount:NAME", {virtplane:serviceaccounts}),
                                        credential "token:<id>"

The static token is checked first and in memory, so it works when etcd or the directory is down (the
directory is only asked at login). Sessions and tokens are looked up in etcd on each request
(``controller.store.identity``: one read by key); a logout or a revoked token is refused at once on every
replica.
"""

from __future__ import annotations

from controller.api.auth import Identity, StaticTokenAuthenticator
from controller.store import Store

SERVICE_ACCOUNTS_GROUP = "virtplane:serviceaccounts"


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


class SessionAuthenticator:
    def __init__(self, static: StaticTokenAuthenticator, store: Store) -> None:
        self.static = static
        self.store = store

    async def authenticate(self, authorization: str | None) -> Identity | None:
        who = self.static.match(authorization)
        if who is not None:
            return who
        secret = bearer(authorization)
        if secret is None:
            return None
        session = await self.store.identities.session(secret)
        if session is not None:
            return Identity(session.user, frozenset(session.groups), credential=f"session:{session.id}")
        token = await self.store.identities.token(secret)
        if token is not None:
            return Identity(
                f"serviceaccount:{token.account}", frozenset({SERVICE_ACCOUNTS_GROUP}), credential=f"token:{token.id}"
            )
        return None
