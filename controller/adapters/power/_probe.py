"""Structured reachability checks used to classify a failed agent run without reading its prose.

- :func:`rmcp_ping`: an ASF presence ping (RMCP, UDP) answered by every IPMI-over-LAN BMC before any
  session, so "no pong" means unreachable and "pong" means the BMC is there (a failure then lies in
  the session: credentials, privilege, cipher).
- :func:`tcp_answers`: a TCP connect, for Redfish (HTTPS) and ssh.
- :func:`redfish_login_status`: the HTTP status of an authenticated GET of the Redfish service's
  Systems collection (401/403: refused credentials).
"""

from __future__ import annotations

import socket
import ssl

import anyio
import httpx

from controller.adapters.secrets import Secret

# RMCP header (version 6, reserved, seq 0xff = no ack, class ASF) + ASF IANA 4542, presence ping (0x80)
_PRESENCE_PING = bytes((0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x00, 0x00, 0x00))
_PRESENCE_PONG = 0x40


def _ping_blocking(address: str, port: int, timeout: float, tries: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout / tries)
        for tag in range(1, tries + 1):
            packet = bytearray(_PRESENCE_PING)
            packet[9] = tag
            try:
                sock.sendto(bytes(packet), (address, port))
                while True:
                    data, _ = sock.recvfrom(512)
                    if len(data) >= 10 and data[3] == 0x06 and data[8] == _PRESENCE_PONG and data[9] == tag:
                        return True
            except (TimeoutError, ConnectionRefusedError):
                continue
            except OSError:
                return False
    return False


async def rmcp_ping(address: str, port: int = 623, timeout: float = 3.0, tries: int = 3) -> bool:
    """True if a BMC at ``address:port`` answers an RMCP/ASF presence ping."""
    return await anyio.to_thread.run_sync(_ping_blocking, address, port, timeout, tries)


async def tcp_answers(address: str, port: int, timeout: float = 3.0) -> bool:
    """True if a TCP connection to ``address:port`` is accepted within ``timeout``."""
    with anyio.move_on_after(timeout):
        try:
            stream = await anyio.connect_tcp(address, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def redfish_login_status(
    address: str, port: int, username: str, password: Secret | None, *, verify_tls: bool, timeout: float = 5.0
) -> int | None:
    """HTTP status of ``GET https://address:port/redfish/v1/Systems`` with basic auth; None if no answer."""
    verify: ssl.SSLContext | bool = verify_tls
    auth = (username, password.reveal() if password else "")
    try:
        async with httpx.AsyncClient(verify=verify, timeout=timeout) as client:
            response = await client.get(f"https://{address}:{port}/redfish/v1/Systems", auth=auth)
    except httpx.HTTPError:
        return None
    return response.status_code
