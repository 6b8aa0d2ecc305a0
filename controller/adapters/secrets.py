"""Secrets (passwords of power agents, iSCSI CHAP secrets, ...): referenced by name in specs, read from a
file at call time, never shown, never stored in etcd, status, events or logs.

A spec field such as ``powerManagement.passwordSecret`` names a file in the directory the operator gives
the server (``virtplane server --secrets-dir``, default ``/etc/virtplane/secrets``). The file holds the
password on its first line. It is read each time it is needed, so a rotated password is used at once, and
it is refused when it is readable by others than its owner or lies outside the allowed directory (also
through symlinks).

:class:`Secret` never prints its value (``repr``/``str`` show ``***``); :func:`redact` removes it
from any text an agent printed before that text becomes a message, a log line or a status field.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SECRETS_DIR = Path("/etc/virtplane/secrets")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class SecretError(Exception):
    """A secret reference cannot be used; the message names the reference and the rule, never the value."""


@dataclass(frozen=True)
class Secret:
    """A password in memory. Only :meth:`reveal` gives the value."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "Secret(***)"


@dataclass(frozen=True)
class SecretRef:
    """A password by reference: the name of a file in ``directory``."""

    name: str
    directory: Path = DEFAULT_SECRETS_DIR

    def path(self) -> Path:
        """The file, checked to stay inside ``directory`` (no ``..``, no symlink out of it)."""
        if not _NAME.match(self.name):
            raise SecretError(
                f"secret name {self.name!r}: use letters, digits, '.', '_' and '-' (a file in {self.directory})"
            )
        base = self.directory.resolve()
        path = (base / self.name).resolve()
        if path.parent != base:
            raise SecretError(f"secret {self.name!r} resolves outside {self.directory}")
        return path

    def path_checked(self) -> Path:
        """:meth:`path`, and the file exists, is regular and is not readable by group or others."""
        path = self.path()
        try:
            info = path.stat()
        except FileNotFoundError:
            raise SecretError(f"secret {self.name!r}: no file {path}") from None
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"secret {self.name!r}: {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SecretError(
                f"secret {self.name!r}: {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
            )
        return path

    def read(self) -> Secret:
        """The password: the file's first line without its line ending."""
        text = self.path_checked().read_text()
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise SecretError(f"secret {self.name!r}: {self.path()} is empty")
        return Secret(lines[0])


def redact(text: str, *secrets: Secret | None) -> str:
    """``text`` with every secret value replaced by ``***``."""
    for secret in secrets:
        if secret is not None and secret.reveal():
            text = text.replace(secret.reveal(), "***")
    return text
