"""Host runtimes: one libvirt connection per Host object, plus what we last observed there.

``test:///default`` is one shared in-process state in libvirt's test driver, so several Hosts naming it
would see each other's domains. Each such Host gets its own simulated node instead (a node file under
the data dir: 64 CPUs, 256 GiB unless the URI says ``test:///default?cpus=N&memory=GiB``); any other
``test:///path.xml`` is used as given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from controller.adapters.libvirt.connection import HostConnection
from controller.common.errors import TransientError
from controller.runtime.domains import DomainIndex, HostDomains
from reconcilers.domain import (
    DomainType,
    HostName,
    NetworkConfig,
    ObservedDomain,
    ObservedHost,
    PoolConfig,
)

log = logging.getLogger("virtplane.hosts")

SIM_CPUS = 64
SIM_MEMORY_GIB = 256


@dataclass
class HostRuntime:
    name: HostName
    uri: str
    conn: HostConnection
    observed: ObservedHost | None = None
    domains: HostDomains = field(default_factory=HostDomains)  # kept current by events (runtime.domains)
    pools: dict[str, PoolConfig] = field(default_factory=dict)  # ensured since connecting
    networks: dict[str, NetworkConfig] = field(default_factory=dict)
    domain_type: DomainType = "kvm"
    last_listed: float = 0.0  # monotonic time of the last listing (0: never listed since connecting)
    events_subscribed: bool = False
    watching_since: datetime | None = None  # first observation by this controller
    last_answer: datetime | None = None  # the last time the host answered this controller

    @property
    def ready(self) -> bool:
        return self.observed is not None and self.observed.ready


def open_connection(name: str, uri: str, sim_dir: Path, capacity: int) -> HostConnection:
    parts = urlsplit(uri)
    if parts.scheme == "test" and parts.path == "/default":
        query = parse_qs(parts.query)
        cpus = int(query.get("cpus", [SIM_CPUS])[0])
        memory_gib = int(query.get("memory", [SIM_MEMORY_GIB])[0])
        sim_dir.mkdir(parents=True, exist_ok=True)
        return HostConnection.for_test_host(name, sim_dir, cpus=cpus, memory_kib=memory_gib << 20, capacity=capacity)
    return HostConnection(name, uri, capacity=capacity)


class HostUnavailable(TransientError):
    """An action needs a host that is not connected or not Ready."""


class HostRegistry:
    def __init__(self, sim_dir: Path, *, capacity: int = 4) -> None:
        self.sim_dir = sim_dir
        self.capacity = capacity
        self.hosts: dict[HostName, HostRuntime] = {}
        self.index = DomainIndex()  # where each domain may be, kept by the hosts' domain caches

    def ensure(self, name: str, uri: str) -> HostRuntime:
        """The runtime for a Host; a changed URI replaces the connection."""
        current = self.hosts.get(HostName(name))
        if current is not None and current.uri == uri:
            return current
        conn = open_connection(name, uri, self.sim_dir, self.capacity)
        runtime = HostRuntime(HostName(name), uri, conn, domains=HostDomains(host=name, index=self.index))
        if conn.is_test:
            runtime.domain_type = "kvm"
        self.hosts[HostName(name)] = runtime
        if current is not None:
            log.info("host %s: URI changed from %s to %s", name, current.uri, uri)
        return runtime

    async def remove(self, name: str) -> HostRuntime | None:
        runtime = self.hosts.pop(HostName(name), None)
        if runtime is not None:
            await runtime.conn.close()
        return runtime

    def connections(self) -> dict[HostName, HostConnection]:
        return {name: rt.conn for name, rt in self.hosts.items() if rt.ready}

    def connection(self, name: HostName) -> HostConnection:
        """The connection of a Ready host; HostUnavailable (transient) otherwise."""
        runtime = self.hosts.get(name)
        if runtime is None or not runtime.ready:
            raise HostUnavailable(f"no connection to host {name}", retry_after=1.0)
        return runtime.conn

    def ready(self, name: str) -> bool:
        runtime = self.hosts.get(HostName(name))
        return runtime is not None and runtime.ready

    async def close(self) -> None:
        for runtime in list(self.hosts.values()):
            await runtime.conn.close()
        self.hosts.clear()

    def locate(self, domain: str) -> dict[HostName, ObservedDomain]:
        """Where a domain of this name was last seen, per reachable host (the hosts the index names, each
        checked; those that no longer hold it are pruned from the index)."""
        found: dict[HostName, ObservedDomain] = {}
        candidates = self.index.hosts.get(domain)
        if not candidates:
            return found
        # In the registry's order, as a walk over every host would find them (then those it no longer has).
        names = list(candidates) if len(candidates) == 1 else (
            [n for n in self.hosts if n in candidates] + [n for n in candidates if n not in self.hosts]
        )
        for name in names:
            rt = self.hosts.get(HostName(name))
            d = rt.domains.entries.get(domain) if rt is not None else None
            if d is None:
                candidates.discard(name)
            elif rt is not None and rt.ready:
                found[HostName(name)] = d
        if not candidates:
            del self.index.hosts[domain]
        return found

    def now(self) -> float:
        return time.monotonic()
