"""Directory (LDAP) login: configuration, vendor profiles, the result and the errors. No I/O here.

Public names are re-exported by ``controller.adapters.directory``; import them from there.

A ``DirectoryConfig`` names the servers, how TLS is done, the service account and where users and groups
live. Attribute names and the way nested groups are resolved differ between directory products; a
``DirectoryProfile`` (one per product in ``PROFILES``) supplies those defaults, and any of them can be
overridden field by field in the config.

Errors (every one carries a typed reason; the message is for display only and never holds a password)::

    DirectoryError
    ├── AuthenticationFailed          the person is not logged in (an HTTP API answers 401)
    │   ├── InvalidCredentials(reason: CredentialProblem)   wrong password, unknown or ambiguous user,
    │   │                                                   empty password or username
    │   └── AccountLocked(reason: AccountProblem)           the directory refuses the account itself:
    │                                                       locked, disabled, expired, must change password
    └── DirectoryUnavailable(reason: Unavailable, url)      no answer we can trust (an HTTP API answers 503):
                                                            down, timeout, TLS failure, service bind refused,
                                                            secret file unreadable, search failed, server
                                                            error, request refused by ldap3 itself
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ProfileName = Literal["openldap", "389ds", "freeipa", "activedirectory"]
NestedGroups = Literal["memberof", "in-chain", "search"]
"""How nested groups are resolved:

- ``memberof``: the server keeps a transitive ``memberOf`` on the user (FreeIPA and 389 DS with their memberOf
  plugin; OpenLDAP 2.5+ with ``dynlist-attrset ... member+memberOf@groupOfNames*``). One search.
- ``in-chain``: Active Directory's LDAP_MATCHING_RULE_IN_CHAIN (1.2.840.113556.1.4.1941) on ``member``. One
  search, the server walks the chain.
- ``search``: we walk it, breadth first: groups whose member is the user, then groups whose member is one of
  those, ..., bounded by ``max_group_depth`` and ``max_groups``. Works on any server.
"""

IN_CHAIN_RULE = "1.2.840.113556.1.4.1941"


class CredentialProblem(enum.Enum):
    WRONG_PASSWORD = "wrong-password"
    UNKNOWN_USER = "unknown-user"
    AMBIGUOUS_USER = "ambiguous-user"
    EMPTY_PASSWORD = "empty-password"  # refused before any bind: an empty simple bind is an anonymous bind
    BAD_USERNAME = "bad-username"  # empty, too long, or with a NUL


class AccountProblem(enum.Enum):
    LOCKED = "locked"
    DISABLED = "disabled"
    EXPIRED = "expired"
    PASSWORD_EXPIRED = "password-expired"
    PASSWORD_CHANGE_REQUIRED = "password-change-required"


class Unavailable(enum.Enum):
    UNREACHABLE = "unreachable"  # connection refused, no route, name does not resolve
    TIMEOUT = "timeout"  # connect or an answer took longer than the configured timeout
    TLS = "tls"  # handshake failed: certificate not trusted, wrong name, StartTLS refused
    SERVICE_BIND = "service-bind"  # the service account was refused (its DN or password file is wrong)
    SECRET_FILE = "secret-file"  # the service account's password file cannot be read
    SEARCH_FAILED = "search-failed"  # a user or group search failed (wrong base, size limit, no access)
    SERVER = "server"  # busy, unavailable, or an LDAP result we do not expect on a bind
    CLIENT = "client"  # ldap3 refused to send the request (a bug, or a config value it rejects)


class DirectoryError(Exception):
    """Base of every directory login error."""


class AuthenticationFailed(DirectoryError):
    """The person could not be logged in. Say nothing more specific to them than this."""


class InvalidCredentials(AuthenticationFailed):
    def __init__(self, reason: CredentialProblem, username: str) -> None:
        super().__init__(f"directory login of {username!r} refused: {reason.value}")
        self.reason = reason
        self.username = username


class AccountLocked(AuthenticationFailed):
    def __init__(self, reason: AccountProblem, username: str) -> None:
        super().__init__(f"directory account {username!r} cannot log in: {reason.value}")
        self.reason = reason
        self.username = username


class DirectoryUnavailable(DirectoryError):
    def __init__(self, reason: Unavailable, url: str, detail: str) -> None:
        super().__init__(f"directory {url} unavailable ({reason.value}): {detail}")
        self.reason = reason
        self.url = url
        self.detail = detail


@dataclass(frozen=True)
class DirectoryUser:
    """Who logged in: ``name`` is the login attribute's value as the directory spells it (not as typed),
    ``groups`` the names (cn) of every group the user is in, directly or through nested groups, under the
    group base; ``group_dns`` the same groups by DN."""

    name: str
    dn: str
    groups: frozenset[str] = field(default_factory=frozenset)
    group_dns: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class DirectoryProfile:
    """What differs between directory products. ``locked_bind_results`` are LDAP result codes that the
    product returns on a bind to a locked or deactivated account (besides the password-policy control,
    which is always requested and always honoured)."""

    login_attribute: str
    user_filter: str
    group_filter: str
    member_attribute: str
    memberof_attribute: str
    group_name_attribute: str
    nested_groups: NestedGroups
    locked_bind_results: frozenset[int] = frozenset()
    ad_bind_subcodes: bool = False  # Active Directory's "data 775"-style sub-code in the diagnostic


PROFILES: dict[ProfileName, DirectoryProfile] = {
    # OpenLDAP: memberof overlay gives direct groups only; dynlist (2.5+) can give nested ones, so the safe
    # default is our own breadth-first search. Locking is ppolicy's (pwdAccountLockedTime).
    "openldap": DirectoryProfile(
        login_attribute="uid",
        user_filter="(objectClass=inetOrgPerson)",
        group_filter="(objectClass=groupOfNames)",
        member_attribute="member",
        memberof_attribute="memberOf",
        group_name_attribute="cn",
        nested_groups="search",
    ),
    # 389 Directory Server: classic groups are groupOfUniqueNames/uniqueMember; the memberOf plugin resolves
    # nested groups. A locked account answers 19 (retry limit) and a deactivated one 53.
    "389ds": DirectoryProfile(
        login_attribute="uid",
        user_filter="(objectClass=inetOrgPerson)",
        group_filter="(|(objectClass=groupOfUniqueNames)(objectClass=groupOfNames))",
        member_attribute="uniqueMember",
        memberof_attribute="memberOf",
        group_name_attribute="cn",
        nested_groups="memberof",
        locked_bind_results=frozenset({19, 53}),
    ),
    # FreeIPA (389 DS underneath): users under cn=users,cn=accounts, groups under cn=groups,cn=accounts,
    # memberOf includes indirect membership.
    "freeipa": DirectoryProfile(
        login_attribute="uid",
        user_filter="(objectClass=posixAccount)",
        group_filter="(objectClass=groupOfNames)",
        member_attribute="member",
        memberof_attribute="memberOf",
        group_name_attribute="cn",
        nested_groups="memberof",
        locked_bind_results=frozenset({19, 53}),
    ),
    # Active Directory: memberOf is direct only; the in-chain matching rule walks nesting server-side.
    # userPrincipalName (alice@example.com) can be set as login_attribute instead of sAMAccountName.
    # (Other servers do not know the in-chain rule: OpenLDAP 2.5 evaluates it as Undefined and returns no
    # groups at all, without an error; so never set nested_groups="in-chain" outside AD.)
    "activedirectory": DirectoryProfile(
        login_attribute="sAMAccountName",
        user_filter="(&(objectCategory=person)(objectClass=user))",
        group_filter="(objectClass=group)",
        member_attribute="member",
        memberof_attribute="memberOf",
        group_name_attribute="cn",
        nested_groups="in-chain",
        ad_bind_subcodes=True,
    ),
}


def _is_filter(value: str) -> bool:
    return value.startswith("(") and value.endswith(")") and value.count("(") == value.count(")")


class DirectoryConfig(BaseModel):
    """Where and how to log people in. ``ldap://`` URLs always use StartTLS and ``ldaps://`` URLs TLS from
    the first byte; there is no plain-text mode. Servers are tried in order; the next one only when the
    previous is unavailable (never after a refused password). ``ca_file`` None means the system's trust
    store. The service account's password is read from ``bind_password_file`` at each login (so it can be
    rotated) and is never kept on this object."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: ProfileName = "openldap"
    urls: tuple[str, ...] = Field(min_length=1)
    ca_file: Path | None = None
    bind_dn: str | None = None
    bind_password_file: Path | None = None
    user_base: str
    user_filter: str | None = None
    login_attribute: str | None = None
    group_base: str
    group_filter: str | None = None
    member_attribute: str | None = None
    memberof_attribute: str | None = None
    group_name_attribute: str | None = None
    nested_groups: NestedGroups | None = None
    max_group_depth: int = Field(default=8, ge=1, le=64)
    max_groups: int = Field(default=1000, ge=1)
    connect_timeout: float = Field(default=3.0, gt=0)
    operation_timeout: int = Field(default=5, ge=1, description="seconds; whole seconds (ldap3 needs an int)")
    max_concurrent: int = Field(default=8, ge=1, description="binds in flight at once (worker threads)")

    @field_validator("urls")
    @classmethod
    def _urls_are_ldap(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
                raise ValueError(f"{url!r}: expected ldap://host[:port] (StartTLS) or ldaps://host[:port]")
            if parts.path not in ("", "/"):
                raise ValueError(f"{url!r}: give the base DNs as user_base/group_base, not in the URL")
        return urls

    @field_validator("user_filter", "group_filter")
    @classmethod
    def _filters_parenthesised(cls, value: str | None) -> str | None:
        if value is not None and not _is_filter(value):
            raise ValueError(f"{value!r} is not a parenthesised LDAP filter such as (objectClass=person)")
        return value

    @model_validator(mode="after")
    def _service_account_complete(self) -> DirectoryConfig:
        if (self.bind_dn is None) != (self.bind_password_file is None):
            raise ValueError("bind_dn and bind_password_file go together (or neither, for anonymous search)")
        return self

    # -- the profile's defaults, overridden by what the config says -----------------------------------

    @property
    def effective(self) -> DirectoryProfile:
        base = PROFILES[self.profile]
        return DirectoryProfile(
            login_attribute=self.login_attribute or base.login_attribute,
            user_filter=self.user_filter or base.user_filter,
            group_filter=self.group_filter or base.group_filter,
            member_attribute=self.member_attribute or base.member_attribute,
            memberof_attribute=self.memberof_attribute or base.memberof_attribute,
            group_name_attribute=self.group_name_attribute or base.group_name_attribute,
            nested_groups=self.nested_groups or base.nested_groups,
            locked_bind_results=base.locked_bind_results,
            ad_bind_subcodes=base.ad_bind_subcodes,
        )
