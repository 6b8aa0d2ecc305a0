"""The blocking half of directory login: one ldap3 session per login, run in a worker thread.

Private to ``controller.adapters.directory`` (which runs these functions through ``anyio.to_thread``). One login at
one server URL::

    open the socket (TLS at once for ldaps://) -> StartTLS (ldap://) -> bind as the service account
    -> search the user (login attribute = the escaped input, size limit 2)
    -> bind as the user, with the password-policy request control
    -> bind again as the service account -> resolve groups -> unbind

Every outcome is decided on typed values: the LDAP result code, the password-policy response control, the
ldap3/ssl exception class. The one exception is Active Directory, which reports why a bind was refused
only as a hex sub-code inside its diagnostic message ("... data 775, ..."); ``ad_bind_subcode`` (in
``controller.adapters.directory.protocol``, with the other connection-free details) extracts that code, and nothing
else, when the profile says the server is AD.

TLS: ldap3 verifies host names with ``ssl.match_hostname`` (deprecated since Python 3.10, gone in 3.12, and
a DeprecationWarning under our warnings-as-errors tests), so ``_ContextTls`` wraps sockets with one
``ssl.SSLContext`` of ours per client instead: CERT_REQUIRED, check_hostname, TLS 1.2 or newer.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPResponseTimeoutError,
    LDAPSocketOpenError,
    LDAPStartTLSError,
)

from controller.adapters.directory.config import (
    AccountLocked,
    AccountProblem,
    CredentialProblem,
    DirectoryConfig,
    DirectoryProfile,
    DirectoryUnavailable,
    DirectoryUser,
    InvalidCredentials,
    Unavailable,
)
from controller.adapters.directory.protocol import (
    AD_SUBCODES,
    PPOLICY_ERRORS,
    PPOLICY_OID,
    ad_bind_subcode,
    check_username,
    chunks,
    dn_key,
    first_value,
    is_under,
    member_filter,
    ppolicy_error,
    rdn_value,
    user_filter,
    values,
)

log = logging.getLogger("controller.adapters.directory")

SUCCESS, SIZE_LIMIT_EXCEEDED, INVALID_CREDENTIALS = 0, 4, 49
_OR_CHUNK = 32  # member values OR-ed into one group search


@dataclass(frozen=True)
class LoginContext:
    """Everything a login needs, built once per client: the config, its effective profile, the TLS
    context (loaded once, shared by every worker thread)."""

    config: DirectoryConfig
    profile: DirectoryProfile
    tls: ssl.SSLContext

    @classmethod
    def build(cls, config: DirectoryConfig) -> LoginContext:
        return cls(config, config.effective, make_tls_context(config.ca_file))


def make_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _ContextTls(ldap3.Tls):  # type: ignore[misc]  # ldap3 has no type information
    """ldap3's Tls, but the handshake and the host-name check are OpenSSL's, through our context."""

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._server_name = server_name

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        # Without TCP_NODELAY the first request after the handshake waits ~40 ms (Nagle's algorithm
        # holding it behind the unacknowledged Finished message until the server's delayed ACK).
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._server_name,
        )


def classify_unavailable(url: str, exc: BaseException) -> DirectoryUnavailable:
    """The one place where ldap3/socket/ssl exceptions become ``DirectoryUnavailable`` reasons.
    ldap3 raises classes that inherit from both its own error and the original (ssl.SSLError,
    TimeoutError, ConnectionRefusedError, ...), so the class tells what happened. When a host name has
    several addresses and all fail, ldap3 raises one LDAPSocketOpenError listing each address's error:
    the most telling of those decides (TLS, then timeout, then unreachable), so "::1 refused,
    127.0.0.1 untrusted certificate" is a TLS problem, not an unreachable server."""
    causes = [exc, *_per_address_errors(exc)]
    if any(isinstance(e, ssl.SSLError | ssl.CertificateError | LDAPStartTLSError) for e in causes):
        reason = Unavailable.TLS
    elif any(isinstance(e, TimeoutError | LDAPResponseTimeoutError) for e in causes):
        reason = Unavailable.TIMEOUT
    elif isinstance(exc, LDAPCommunicationError | OSError):
        reason = Unavailable.UNREACHABLE
    else:
        reason = Unavailable.CLIENT  # ldap3 refused to send the request: a bug or a bad config value
    return DirectoryUnavailable(reason, url, f"{type(exc).__name__}: {exc}")


def _per_address_errors(exc: BaseException) -> list[BaseException]:
    """ldap3's LDAPSocketOpenError('unable to open socket', [(error, address), ...])."""
    if isinstance(exc, LDAPSocketOpenError) and len(exc.args) > 1 and isinstance(exc.args[1], list):
        return [item[0] for item in exc.args[1] if isinstance(item, tuple) and isinstance(item[0], BaseException)]
    return []


def read_secret(path: Path, url: str) -> str:
    try:
        secret = path.read_text().rstrip("\r\n")
    except OSError as err:
        raise DirectoryUnavailable(Unavailable.SECRET_FILE, url, f"cannot read {path}: {err.strerror}") from None
    if not secret:
        raise DirectoryUnavailable(Unavailable.SECRET_FILE, url, f"{path} is empty")
    return secret


# -- one session against one server ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    dn: str
    attributes: Mapping[str, Any]


class _Session:
    """One connection to one URL. Methods raise the typed errors; ldap3 exceptions are turned into
    ``DirectoryUnavailable`` by the caller (``run_at``)."""

    def __init__(self, ctx: LoginContext, url: str) -> None:
        self.ctx, self.url = ctx, url
        parts = urlsplit(url)
        host = parts.hostname or ""
        use_ssl = parts.scheme == "ldaps"
        server = ldap3.Server(
            host,
            port=parts.port or (636 if use_ssl else 389),
            use_ssl=use_ssl,
            tls=_ContextTls(ctx.tls, host),
            connect_timeout=ctx.config.connect_timeout,
            get_info=ldap3.NONE,
        )
        self.conn = ldap3.Connection(
            server,
            client_strategy=ldap3.SYNC,
            authentication=ldap3.SIMPLE,
            auto_bind=ldap3.AUTO_BIND_NONE,
            raise_exceptions=False,
            receive_timeout=ctx.config.operation_timeout,
            read_only=True,
            auto_referrals=False,
        )
        self.start_tls = not use_ssl

    def open(self) -> None:
        self.conn.open(read_server_info=False)
        if self.start_tls:
            self.conn.start_tls(read_server_info=False)

    def close(self) -> None:
        with contextlib.suppress(LDAPException, OSError):
            self.conn.unbind()
        # ldap3 keeps the socket of a connection that failed to open (refused, TLS) and unbind() skips
        # closed connections, so close it here or it leaks until garbage collection.
        sock = getattr(self.conn, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def bind_service(self) -> None:
        config = self.ctx.config
        if config.bind_dn is None or config.bind_password_file is None:
            return
        if not self._bind(config.bind_dn, read_secret(config.bind_password_file, self.url)):
            result = self.conn.result or {}
            raise DirectoryUnavailable(
                Unavailable.SERVICE_BIND,
                self.url,
                f"bind as {config.bind_dn} refused: {result.get('description')} ({result.get('result')})",
            )

    def find_user(self, username: str) -> _Entry:
        profile = self.ctx.profile
        attributes = [profile.login_attribute]
        if profile.nested_groups == "memberof":
            attributes.append(profile.memberof_attribute)
        code, entries = self._search(self.ctx.config.user_base, user_filter(profile, username), attributes,
                                     size_limit=2)
        if code not in (SUCCESS, SIZE_LIMIT_EXCEEDED):
            raise self._search_failed("user search", self.ctx.config.user_base)
        if not entries:
            raise InvalidCredentials(CredentialProblem.UNKNOWN_USER, username)
        if len(entries) > 1 or code == SIZE_LIMIT_EXCEEDED:
            log.warning("directory: %d entries match login %r under %s; refusing", len(entries), username,
                        self.ctx.config.user_base)
            raise InvalidCredentials(CredentialProblem.AMBIGUOUS_USER, username)
        return entries[0]

    def bind_user(self, entry: _Entry, username: str, password: str) -> None:
        ok = self._bind(entry.dn, password, controls=[(PPOLICY_OID, False, None)])
        result = self.conn.result or {}
        problem = self._account_problem(result)
        if problem is not None:
            raise AccountLocked(problem, username)
        if ok:
            return
        code = result.get("result")
        if code == INVALID_CREDENTIALS:
            raise InvalidCredentials(CredentialProblem.WRONG_PASSWORD, username)
        if code in self.ctx.profile.locked_bind_results:
            raise AccountLocked(AccountProblem.LOCKED, username)
        raise DirectoryUnavailable(
            Unavailable.SERVER, self.url, f"bind of {entry.dn}: {result.get('description')} ({code})"
        )

    def groups(self, user: _Entry) -> dict[str, str]:
        """{group DN: group name} for every group the user is in, nested ones included."""
        strategy = self.ctx.profile.nested_groups
        if strategy == "memberof":
            base = self.ctx.config.group_base
            dns = values(user.attributes, self.ctx.profile.memberof_attribute)
            return {dn: rdn_value(dn) for dn in dns if is_under(dn, base)}
        if strategy == "in-chain":
            return self._group_level([user.dn], in_chain=True)
        return self._groups_breadth_first(user.dn)

    # -- internals ---------------------------------------------------------------------------------------

    def _bind(self, dn: str, password: str, controls: list[tuple[str, bool, None]] | None = None) -> bool:
        self.conn.user, self.conn.password = dn, password
        try:
            return bool(self.conn.bind(read_server_info=False, controls=controls))
        finally:
            self.conn.password = None

    def _account_problem(self, result: Mapping[str, Any]) -> AccountProblem | None:
        control = (result.get("controls") or {}).get(PPOLICY_OID)
        if control is not None:
            try:
                error = ppolicy_error(control.get("value"))
            except ValueError:
                log.warning("directory %s: undecodable password-policy control ignored", self.url)
                error = None
            if error in PPOLICY_ERRORS:
                return PPOLICY_ERRORS[error]
        if self.ctx.profile.ad_bind_subcodes and result.get("result") == INVALID_CREDENTIALS:
            subcode = ad_bind_subcode(str(result.get("message") or ""))
            return AD_SUBCODES.get(subcode) if subcode is not None else None
        return None

    def _groups_breadth_first(self, user_dn: str) -> dict[str, str]:
        found: dict[str, str] = {}
        seen = {dn_key(user_dn)}
        frontier = [user_dn]
        for _ in range(self.ctx.config.max_group_depth):
            level = self._group_level(frontier)
            frontier = []
            for dn, name in level.items():
                if dn_key(dn) not in seen:
                    seen.add(dn_key(dn))
                    found[dn] = name
                    frontier.append(dn)
            if not frontier:
                return found
            if len(found) > self.ctx.config.max_groups:
                break
        log.warning("directory %s: group nesting of %s deeper than %d levels or more than %d groups; "
                    "deeper groups ignored", self.url, user_dn, self.ctx.config.max_group_depth,
                    self.ctx.config.max_groups)
        return found

    def _group_level(self, member_dns: Sequence[str], *, in_chain: bool = False) -> dict[str, str]:
        """{DN: name} of the groups under the group base having any of ``member_dns`` as a member."""
        profile, base = self.ctx.profile, self.ctx.config.group_base
        found: dict[str, str] = {}
        for chunk in chunks(member_dns, _OR_CHUNK):
            code, entries = self._search(base, member_filter(profile, chunk, in_chain=in_chain),
                                         [profile.group_name_attribute], size_limit=self.ctx.config.max_groups)
            if code != SUCCESS:
                raise self._search_failed("group search", base)
            for entry in entries:
                found[entry.dn] = first_value(entry.attributes, profile.group_name_attribute) or rdn_value(entry.dn)
        return found

    def _search(self, base: str, search: str, attributes: list[str], size_limit: int) -> tuple[int, list[_Entry]]:
        self.conn.search(
            search_base=base,
            search_filter=search,
            search_scope=ldap3.SUBTREE,
            attributes=attributes,
            size_limit=size_limit,
            time_limit=self.ctx.config.operation_timeout,
        )
        code = int((self.conn.result or {}).get("result", -1))
        entries = [
            _Entry(str(item["dn"]), item.get("attributes") or {})
            for item in self.conn.response or []
            if item.get("type") == "searchResEntry"
        ]
        return code, entries

    def _search_failed(self, what: str, base: str) -> DirectoryUnavailable:
        result = self.conn.result or {}
        return DirectoryUnavailable(
            Unavailable.SEARCH_FAILED,
            self.url,
            f"{what} under {base}: {result.get('description')} ({result.get('result')})",
        )


# -- entry points (blocking; called in a worker thread) ----------------------------------------------------


def login(ctx: LoginContext, username: str, password: str) -> DirectoryUser:
    """Authenticate at the first URL that answers; raise the typed errors of ``controller.adapters.directory``."""
    check_username(username)
    if not password:
        raise InvalidCredentials(CredentialProblem.EMPTY_PASSWORD, username)
    last: DirectoryUnavailable | None = None
    for url in ctx.config.urls:
        try:
            return _login_at(ctx, url, username, password)
        except DirectoryUnavailable as err:
            log.warning("directory login of %r: %s", username, err)
            last = err
    assert last is not None  # urls has at least one element
    raise last


def _login_at(ctx: LoginContext, url: str, username: str, password: str) -> DirectoryUser:
    session = _Session(ctx, url)
    try:
        session.open()
        session.bind_service()
        entry = session.find_user(username)
        session.bind_user(entry, username, password)
        session.bind_service()
        groups = session.groups(entry)
    except (LDAPException, OSError) as err:
        raise classify_unavailable(url, err) from err
    finally:
        session.close()
    name = first_value(entry.attributes, ctx.profile.login_attribute) or username
    return DirectoryUser(name=name, dn=entry.dn, groups=frozenset(groups.values()), group_dns=frozenset(groups))


def check(ctx: LoginContext) -> str:
    """Connect, bind as the service account and read the user base at each URL in turn; return the first
    URL that works or raise its ``DirectoryUnavailable``."""
    last: DirectoryUnavailable | None = None
    for url in ctx.config.urls:
        session = _Session(ctx, url)
        try:
            session.open()
            session.bind_service()
            base = ctx.config.user_base
            session.conn.search(base, "(objectClass=*)", ldap3.BASE, attributes=["1.1"],
                                time_limit=ctx.config.operation_timeout)
            if (session.conn.result or {}).get("result") != SUCCESS:
                raise session._search_failed("read of the user base", base)
            return url
        except (LDAPException, OSError) as err:
            last = classify_unavailable(url, err)
        except DirectoryUnavailable as err:
            last = err
        finally:
            session.close()
    assert last is not None
    raise last
