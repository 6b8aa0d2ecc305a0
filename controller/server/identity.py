"""`virtplane server --directory FILE`: the directory (LDAP) configuration for logins.

FILE is YAML whose ``directory:`` section is a ``controller.adapters.directory.DirectoryConfig`` (exactly
what ``virtplane lab directory up`` prints)::

    directory:
      profile: openldap            # openldap | 389ds | freeipa | activedirectory
      urls: [ldap://ldap.example.com:389]     # StartTLS; ldaps://... for TLS from the first byte
      ca_file: /etc/virtplane/ldap-ca.pem
      bind_dn: cn=virtplane,ou=services,dc=example,dc=com
      bind_password_file: /etc/virtplane/ldap-bind.password   # mode 0600; read at each login, never logged
      user_base: ou=people,dc=example,dc=com
      group_base: ou=groups,dc=example,dc=com

A mistake is refused at start with the file, the field path and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from controller.adapters.directory import DirectoryClient, DirectoryConfig


def load_directory(path: Path) -> DirectoryClient:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"--directory {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"--directory {path}: not YAML: {e}") from e
    section = raw.get("directory", raw) if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise ValueError(f"--directory {path}: expected a mapping with a `directory:` section")
    try:
        config = DirectoryConfig.model_validate(section)
    except ValidationError as e:
        problems = "; ".join(f"directory.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"--directory {path}: {problems}") from e
    secret = config.bind_password_file
    if secret is not None:
        if not secret.is_file():
            raise ValueError(f"--directory {path}: directory.bind_password_file {secret}: no such file")
        if secret.stat().st_mode & 0o077:
            raise ValueError(
                f"--directory {path}: directory.bind_password_file {secret} is readable by others; chmod 600 it"
            )
    return DirectoryClient(config)
