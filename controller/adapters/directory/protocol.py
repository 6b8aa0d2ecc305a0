"""LDAP details of directory login that need no connection: search filters (escaped), DN comparison,
the password-policy response control, Active Directory's bind sub-codes. Pure; tested without a server.

Private to ``controller.adapters.directory``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from controller.adapters.directory.config import (
    IN_CHAIN_RULE,
    AccountProblem,
    CredentialProblem,
    DirectoryProfile,
    InvalidCredentials,
)

PPOLICY_OID = "1.3.6.1.4.1.42.2.27.8.5.1"
MAX_USERNAME = 256

# draft-behera-ldap-password-policy, PasswordPolicyResponseValue.error
PPOLICY_ERRORS = {
    0: AccountProblem.PASSWORD_EXPIRED,
    1: AccountProblem.LOCKED,
    2: AccountProblem.PASSWORD_CHANGE_REQUIRED,
}
# Active Directory's bind sub-codes (hex) meaning "right or wrong password, this account cannot log in"
AD_SUBCODES = {
    0x775: AccountProblem.LOCKED,
    0x533: AccountProblem.DISABLED,
    0x701: AccountProblem.EXPIRED,
    0x532: AccountProblem.PASSWORD_EXPIRED,
    0x773: AccountProblem.PASSWORD_CHANGE_REQUIRED,
}
_AD_DATA = re.compile(r"\bdata ([0-9a-fA-F]{1,8})\b")


# -- filters -------------------------------------------------------------------------------------------------


def check_username(username: str) -> None:
    if not username or len(username) > MAX_USERNAME or "\x00" in username:
        raise InvalidCredentials(CredentialProblem.BAD_USERNAME, username[:MAX_USERNAME])


def user_filter(profile: DirectoryProfile, username: str) -> str:
    """The user search: the profile's filter AND login attribute = the input, escaped (RFC 4515), so
    ``*``, ``(``, ``)``, ``\\`` and NUL in a login name are literal characters, never filter syntax."""
    return f"(&{profile.user_filter}({profile.login_attribute}={escape_filter_chars(username)}))"


def member_filter(profile: DirectoryProfile, member_dns: Sequence[str], *, in_chain: bool = False) -> str:
    """Groups (matching the profile's group filter) with any of ``member_dns`` as a member; with
    ``in_chain``, through any depth of nesting (Active Directory's LDAP_MATCHING_RULE_IN_CHAIN)."""
    attr = f"{profile.member_attribute}:{IN_CHAIN_RULE}:" if in_chain else profile.member_attribute
    either = "".join(f"({attr}={escape_filter_chars(dn)})" for dn in member_dns)
    return f"(&{profile.group_filter}(|{either}))"


def chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- DNs and attributes ------------------------------------------------------------------------------------------


def dn_key(dn: str) -> tuple[tuple[str, str], ...]:
    """A DN normalised for comparison: attribute types and values lower-cased, spacing dropped."""
    return tuple((attr.strip().lower(), value.strip().lower()) for attr, value, _ in parse_dn(dn))


def is_under(dn: str, base: str) -> bool:
    key, base_key = dn_key(dn), dn_key(base)
    return len(key) > len(base_key) and key[len(key) - len(base_key) :] == base_key


def rdn_value(dn: str) -> str:
    return str(parse_dn(dn)[0][1])


def first_value(attributes: Mapping[str, Any], name: str) -> str | None:
    found = values(attributes, name)
    return found[0] if found else None


def values(attributes: Mapping[str, Any], name: str) -> list[str]:
    """An attribute's values as strings, whatever the case of its name in the response."""
    wanted = name.lower()
    for key, value in attributes.items():
        if key.lower() == wanted:
            items = value if isinstance(value, list | tuple) else [value]
            return [item.decode() if isinstance(item, bytes) else str(item) for item in items]
    return []


# -- why a bind was refused ----------------------------------------------------------------------------------------


def ppolicy_error(value: bytes | None) -> int | None:
    """The ``error`` field of a PasswordPolicyResponseValue (BER), or None when absent.

    SEQUENCE { warning [0] CHOICE {...} OPTIONAL, error [1] ENUMERATED OPTIONAL }: walk the SEQUENCE's
    elements and return the integer of the one tagged [1] (0x81)."""
    if not value or value[0] != 0x30:
        return None
    body, _ = _ber_read(value, 0)
    pos = 0
    while pos < len(body):
        tag = body[pos]
        content, pos = _ber_read(body, pos)
        if tag == 0x81 and content:
            return int.from_bytes(content, "big", signed=True)
    return None


def _ber_read(data: bytes, pos: int) -> tuple[bytes, int]:
    """(content, position after it) of the TLV at ``pos``; definite lengths only (as LDAP requires)."""
    if pos + 2 > len(data):
        raise ValueError("truncated BER element")
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or pos + count > len(data):
            raise ValueError("bad BER length")
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    if pos + length > len(data):
        raise ValueError("truncated BER element")
    return data[pos : pos + length], pos + length


def ad_bind_subcode(message: str) -> int | None:
    """Active Directory's extended error from a bind diagnostic, e.g. 0x775 from
    ``80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 775, v4563``.
    AD reports it nowhere else; this reads that one code and decides nothing from the rest of the text."""
    match = _AD_DATA.search(message or "")
    return int(match.group(1), 16) if match else None
