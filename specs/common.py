"""Small value types shared by several kinds: host addresses, absolute paths, uniqueness checks."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)


def check_host_address(value: str) -> str:
    """A DNS host name, an IPv4 address or an IPv6 address (optionally in brackets)."""
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(bare)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError(
            f"expected a host name or IP address like host1.example.com or 10.0.0.5, got {value!r}"
        )
    return value


def check_absolute_path(value: str) -> str:
    if not value.startswith("/") or "\x00" in value:
        raise ValueError(f"expected an absolute path like /srv/images, got {value!r}")
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"path must not contain '..' components, got {value!r}")
    return value


HostAddress = Annotated[str, AfterValidator(check_host_address)]
AbsolutePath = Annotated[str, AfterValidator(check_absolute_path)]


def first_duplicate(values: Iterable[object]) -> tuple[int, object] | None:
    """(index, value) of the first value already seen, or None."""
    seen: set[object] = set()
    for index, value in enumerate(values):
        if value in seen:
            return index, value
        seen.add(value)
    return None
