"""Leader election per scope (a cluster, or the global scope of cluster-less objects) with etcd leases.

Each replica holds one lease (TTL ``ttl``) and refreshes it every ``ttl / 4``. It leads a scope while the
scope's key (``controller.store.leases``) holds its identity under that lease. Safety: a replica stops
acting ``ttl / 2`` after its last successful refresh — before the lease can expire and anyone else can
take the key — so two replicas never act on one cluster at once. SIGKILL a leader and the key vanishes
with its lease; another replica takes over within ``ttl`` (+ one refresh period).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import anyio

from controller.store import Store, StoreError

log = logging.getLogger("virtplane.leader")


class Elector:
    def __init__(
        self, store: Store, identity: str, *, ttl: int = 10, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.identity = identity
        self.ttl = ttl
        self.clock = clock
        self.wanted: set[str] = set()
        self.held: set[str] = set()
        self.lease_id = 0
        self._valid_until = 0.0
        self.on_gain: Callable[[str], None] = lambda cluster: None
        self.rounds = 0  # election rounds run (for observers: metrics, tests)

    def want(self, clusters: set[str]) -> None:
        self.wanted = set(clusters)

    def leads(self, cluster: str) -> bool:
        return cluster in self.held and self.clock() < self._valid_until

    async def _refresh(self) -> bool:
        leases = self.store.leases
        started = self.clock()
        if self.lease_id:
            try:
                if await leases.keepalive(self.lease_id) > 0:
                    lapsed = self.clock() >= self._valid_until
                    self._valid_until = started + self.ttl / 2
                    if lapsed:
                        # Our lease survived but we had stopped acting (a slow loop): act again, and
                        # let the owner re-queue what it skipped meanwhile.
                        for cluster in sorted(self.held):
                            self.on_gain(cluster)
                    return True
            except StoreError as e:  # connection trouble: treat the lease as lost
                log.warning("lease refresh failed: %s", e)
        self.held.clear()
        self._valid_until = 0.0
        try:
            self.lease_id = await leases.grant(self.ttl)
        except StoreError as e:
            log.warning("cannot get a lease: %s", e)
            self.lease_id = 0
            return False
        self._valid_until = started + self.ttl / 2
        return True

    async def _campaign(self) -> None:
        leases = self.store.leases
        for cluster in sorted(self.wanted - self.held):
            if await leases.acquire(cluster, self.identity, self.lease_id):
                self.held.add(cluster)
                log.info("%s now leads cluster %s", self.identity, cluster)
                self.on_gain(cluster)
        for cluster in sorted(self.held):
            holder = await leases.holder(cluster)
            if holder is None or holder[1] != self.lease_id:
                self.held.discard(cluster)
                log.warning("%s lost cluster %s", self.identity, cluster)

    async def run(self) -> None:
        while True:
            try:
                if await self._refresh():
                    await self._campaign()
            except StoreError as e:
                log.warning("election round failed: %s", e)
            self.rounds += 1
            await anyio.sleep(self.ttl / 4)

    async def resign(self) -> None:
        if self.lease_id:
            with contextlib.suppress(StoreError):
                await self.store.leases.revoke(self.lease_id)
        self.held.clear()
