"""Directory login latency against the lab slapd, with raw ldap3 binds in the same run as a baseline.

    .venv/bin/python bench/directory_login.py --n 200

Starts a private lab directory (slapd) under a temporary directory and stops it (by PID) at the end.
Measured, each N times, sequentially unless said otherwise:

- ``login``: DirectoryClient.authenticate("dave", ...) end to end: worker-thread hop, connect, TLS, service
  bind, user search, user bind, service bind again, groups (dave is three groups deep);
- ``raw ldap3``: one connection, TLS, one simple bind as dave, unbind, in the calling thread: with ldap3's
  stock Tls (validate=CERT_REQUIRED, CA file), and with our TLS wrapper (TCP_NODELAY, our SSLContext);
- ``20 at once``: 20 concurrent authenticate() calls, repeated N/20 times (per-login latency, and logins/s);
- ``down``: authenticate() against a closed port until DirectoryUnavailable.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import anyio
from common import REPO, load_note, stop_on_sigterm

sys.path.insert(0, str(REPO))

import ldap3

from controller.adapters.directory import DirectoryClient, DirectoryConfig, DirectoryUnavailable
from controller.adapters.directory.ldap import _ContextTls, make_tls_context
from controller.dev.lab.directory import LabDirectory, LabDirectoryInfo
from controller.server.etcd import free_port


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(label: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(f"{label:<52} n={len(ms):<4} p50 {pct(ms, 0.5):7.2f} ms  p95 {pct(ms, 0.95):7.2f} ms  "
          f"max {max(ms):7.2f} ms  mean {statistics.fmean(ms):7.2f} ms")


def time_each(n: int, fn: Callable[[], object]) -> list[float]:
    fn()  # warm-up, not counted
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def raw_bind(info: LabDirectoryInfo, url: str, password: str, tls: ldap3.Tls) -> None:
    host, port = url.split("://")[1].split(":")
    use_ssl = url.startswith("ldaps")
    server = ldap3.Server(host, port=int(port), use_ssl=use_ssl, tls=tls, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, user=info.user("dave").dn, password=password, raise_exceptions=True)
    conn.open(read_server_info=False)
    if not use_ssl:
        conn.start_tls(read_server_info=False)
    assert conn.bind(read_server_info=False)
    conn.unbind()


async def time_logins(n: int, client: DirectoryClient, password: str) -> list[float]:
    await client.authenticate("dave", password)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await client.authenticate("dave", password)
        samples.append(time.perf_counter() - started)
    return samples


async def time_concurrent(n: int, client: DirectoryClient, password: str, width: int = 20) -> tuple[list[float], float]:
    samples: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        await client.authenticate("dave", password)
        samples.append(time.perf_counter() - started)

    wall = time.perf_counter()
    for _ in range(max(1, n // width)):
        async with anyio.create_task_group() as group:
            for _ in range(width):
                group.start_soon(one)
    return samples, len(samples) / (time.perf_counter() - wall)


async def time_down(n: int, config: DirectoryConfig, password: str) -> list[float]:
    client = DirectoryClient(config.model_copy(update={"urls": (f"ldap://127.0.0.1:{free_port()}",)}))
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        try:
            await client.authenticate("dave", password)
        except DirectoryUnavailable:
            samples.append(time.perf_counter() - started)
    return samples


async def run(n: int, info: LabDirectoryInfo) -> None:
    password = info.user("dave").password()
    for ldaps in (False, True):
        url = info.ldaps_url if ldaps else info.url
        kind = "ldaps" if ldaps else "StartTLS"
        stock = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(info.ca_file))
        ours = _ContextTls(make_tls_context(info.ca_file), url.split("://")[1].split(":")[0])
        report(f"raw ldap3 bind, stock Tls, {kind}", time_each(n, lambda: raw_bind(info, url, password, stock)))
        report(f"raw ldap3 bind, our TLS (NODELAY), {kind}", time_each(n, lambda: raw_bind(info, url, password, ours)))
        for nested in ("memberof", "search"):
            client = DirectoryClient(info.client_config(ldaps=ldaps, nested_groups=nested))
            report(f"login dave, {kind}, groups by {nested}", await time_logins(n, client, password))
    client = DirectoryClient(info.client_config(nested_groups="memberof"))
    samples, rate = await time_concurrent(n, client, password)
    report(f"login dave, 20 at once (limiter {client.config.max_concurrent}), StartTLS", samples)
    print(f"{'':<52} throughput {rate:.0f} logins/s")
    report("directory down (closed port) -> DirectoryUnavailable", await time_down(min(n, 50), client.config, password))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="logins per measurement")
    args = parser.parse_args()
    stop_on_sigterm()
    warnings.simplefilter("ignore", DeprecationWarning)  # ldap3's stock Tls calls ssl.match_hostname
    logging.getLogger("controller.adapters.directory").setLevel(logging.ERROR)  # the "down" runs warn once each
    print(f"# start: {load_note()}")
    with tempfile.TemporaryDirectory(prefix="vp-directory-bench-") as tmp:
        lab = LabDirectory(Path(tmp) / "directory")
        try:
            info = lab.up()
            print(f"# slapd pid {info.pid}, {info.url} / {info.ldaps_url}")
            anyio.run(run, args.n, info)
        finally:
            lab.down()
    print(f"# end: {load_note()}")


if __name__ == "__main__":
    main()
