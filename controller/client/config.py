"""Where the CLI and the server keep their configuration.

The server writes the CLI config (server URL, bearer token, the CA of its self-signed certificate; mode
0600) at start, the way k3s writes a
kubeconfig, so the CLI on the same machine needs no flags. Precedence for the CLI: command-line flag,
then environment (VIRTPLANE_SERVER, VIRTPLANE_TOKEN), then the config file (VIRTPLANE_CONFIG or
$XDG_CONFIG_HOME/virtplane/config.json, defaulting to $HOME/.config/virtplane/config.json).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LISTEN = "127.0.0.1:7443"


def config_path() -> Path:
    explicit = os.environ.get("VIRTPLANE_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path(os.environ.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "virtplane" / "config.json"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path(os.environ.get("HOME", "~")).expanduser() / ".local/share")
    return Path(base) / "virtplane"


@dataclass(frozen=True)
class ClientConfig:
    server: str
    token: str | None
    ca: str | None = None  # PEM file the server's certificate must chain to (https); None: the system's
    user: str | None = None  # who `virtplane login` logged in (for display)


class ConfigMissing(Exception):
    """No server URL from flag, environment, or config file."""


def load_client_config(server: str | None = None, token: str | None = None, ca: str | None = None) -> ClientConfig:
    server = server or os.environ.get("VIRTPLANE_SERVER")
    token = token or os.environ.get("VIRTPLANE_TOKEN")
    ca = ca or os.environ.get("VIRTPLANE_CA")
    user = None
    path = config_path()
    if path.exists():
        data = json.loads(path.read_text())
        # The file's token and CA belong to the file's server; don't send the token elsewhere.
        if server is None or server == data.get("server"):
            server = server or data.get("server")
            token = token or data.get("token")
            ca = ca or data.get("ca")
            user = data.get("user")
    if not server:
        raise ConfigMissing(
            f"no server configured: start one with `virtplane server` (it writes {path}), "
            "or pass --server URL / set VIRTPLANE_SERVER"
        )
    return ClientConfig(server=server.rstrip("/"), token=token, ca=ca, user=user)


def write_client_config(config: ClientConfig, path: Path | None = None) -> Path:
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        body = {"server": config.server, "token": config.token}
        body |= {k: v for k, v in (("ca", config.ca), ("user", config.user)) if v}
        json.dump(body, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path


def load_or_create_token(data_dir: Path) -> str:
    """The server's admin bearer token, generated once at first start and kept in the data dir."""
    path = data_dir / "token"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
