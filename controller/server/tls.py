"""TLS for the API: the operator's certificate and key, or a self-signed pair generated under the data dir.

``self_signed(data_dir, hosts)`` makes ``<data_dir>/tls/server.crt`` and ``server.key`` (mode 0600) once,
with Debian's ``openssl`` (no Python crypto dependency), valid 10 years, with subjectAltNames for
localhost, 127.0.0.1, ::1, this machine's name and the listen address. The certificate is its own CA: the
CLI config the server writes names it (``ca``), so the CLI checks the server against exactly it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from pathlib import Path

OPENSSL = "/usr/bin/openssl"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _san(hosts: list[str]) -> str:
    names: list[str] = []
    for host in ["localhost", "127.0.0.1", "::1", socket.gethostname(), *hosts]:
        if not host or host in ("0.0.0.0", "::"):
            continue
        try:
            entry = f"IP:{ipaddress.ip_address(host)}"
        except ValueError:
            entry = f"DNS:{host}"
        if entry not in names:
            names.append(entry)
    return ",".join(names)


def self_signed(data_dir: Path, hosts: list[str]) -> tuple[Path, Path]:
    """(certificate, key) under ``data_dir/tls``, generated on first use and kept."""
    tls = data_dir / "tls"
    cert, key = tls / "server.crt", tls / "server.key"
    if cert.exists() and key.exists():
        return cert, key
    tls.mkdir(parents=True, exist_ok=True, mode=0o700)
    old_umask = os.umask(0o077)
    try:
        done = subprocess.run(
            [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", "/CN=virtplane API server",
             "-addext", f"subjectAltName={_san(hosts)}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,digitalSignature,keyCertSign"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        os.umask(old_umask)
    if done.returncode != 0:
        raise ValueError(f"could not generate a self-signed certificate with {OPENSSL}: {done.stderr.strip()}")
    os.chmod(key, 0o600)
    return cert, key
