"""Directory (LDAP) login for the API server: who is this person, and which groups are they in?

Pure of HTTP: the API layer turns ``DirectoryUser`` into an identity and the errors into 401 / 503::

    client = DirectoryClient(DirectoryConfig(
        profile="openldap",
        urls=("ldap://ldap.example.com",),          # StartTLS; or ldaps://...
        ca_file=Path("/etc/virtplane/ldap-ca.pem"),
        bind_dn="cn=virtplane,ou=services,dc=example,dc=com",
        bind_password_file=Path("/etc/virtplane/ldap-bind.password"),
        user_base="ou=people,dc=example,dc=com",
        group_base="ou=groups,dc=example,dc=com",
    ))
    user = await client.authenticate("alice", password)   # DirectoryUser(name, dn, groups, group_dns)

- Binds never block the event loop: ldap3 (a blocking library) runs in worker threads, at most
  ``config.max_concurrent`` at once (an anyio CapacityLimiter), each with connect and answer timeouts.
  Cancelling ``authenticate`` waits for its thread, which those timeouts bound (per URL: connect_timeout
  + a few operation_timeouts).
- Filter input is escaped (RFC 4515); an empty password is refused before any bind (an empty simple bind
  is an anonymous bind and would "succeed"); the password is never logged nor put in an exception.
- The error tree, profiles and config live in ``controller.adapters.directory.config``; the ldap3 session in
  ``controller.adapters.directory.ldap``. Everything public is re-exported here.
"""

from __future__ import annotations

import logging
import time

import anyio
import anyio.to_thread

from controller.adapters.directory import ldap as directory_ldap
from controller.adapters.directory.config import (
    IN_CHAIN_RULE,
    PROFILES,
    AccountLocked,
    AccountProblem,
    AuthenticationFailed,
    CredentialProblem,
    DirectoryConfig,
    DirectoryError,
    DirectoryProfile,
    DirectoryUnavailable,
    DirectoryUser,
    InvalidCredentials,
    NestedGroups,
    ProfileName,
    Unavailable,
)

__all__ = [
    "IN_CHAIN_RULE",
    "PROFILES",
    "AccountLocked",
    "AccountProblem",
    "AuthenticationFailed",
    "CredentialProblem",
    "DirectoryClient",
    "DirectoryConfig",
    "DirectoryError",
    "DirectoryProfile",
    "DirectoryUnavailable",
    "DirectoryUser",
    "InvalidCredentials",
    "NestedGroups",
    "ProfileName",
    "Unavailable",
    "check_directory",
]

log = logging.getLogger("controller.adapters.directory")


class DirectoryClient:
    """Logs people in against one directory (one or more server URLs). Safe to share: each login opens
    its own connection in a worker thread."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config
        self._ctx = directory_ldap.LoginContext.build(config)
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        # Created on first use, inside the event loop that uses it.
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.max_concurrent)
        return self._limiter

    async def authenticate(self, username: str, password: str) -> DirectoryUser:
        """The user's directory identity and groups, or raise ``InvalidCredentials``, ``AccountLocked``
        (both ``AuthenticationFailed``) or ``DirectoryUnavailable``."""
        started = time.monotonic()
        try:
            user = await anyio.to_thread.run_sync(
                directory_ldap.login, self._ctx, username, password, limiter=self.limiter
            )
        except InvalidCredentials as err:
            log.info("directory login of %r refused: %s", err.username, err.reason.value)
            raise
        except AccountLocked as err:
            log.info("directory login of %r refused: account %s", err.username, err.reason.value)
            raise
        log.info("directory login of %r as %s, %d groups, %.0f ms", user.name, user.dn, len(user.groups),
                 (time.monotonic() - started) * 1000)
        return user

    async def check(self) -> str:
        """Bind as the service account and read the user base; return the URL that answered or raise
        ``DirectoryUnavailable`` (for a start-up or readiness check)."""
        return await anyio.to_thread.run_sync(directory_ldap.check, self._ctx, limiter=self.limiter)


def check_directory(config: DirectoryConfig) -> str:
    """Blocking form of ``DirectoryClient.check`` for code outside an event loop (the lab's readiness)."""
    return directory_ldap.check(directory_ldap.LoginContext.build(config))
