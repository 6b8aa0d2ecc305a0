"""Leader election per scope (a cluster, or the global scope of cluster-less objects) with etcd leases.

Each replica holds one lease (TTL ``ttl``) and refreshes it every ``ttl / 4``. It leads a scope while the
scope's key (``controller.store.leases``) holds its identity under that lease. Safety: a replica stops
acting ``ttl / 2`` after its last successful refresh — before the lease can expire and anyone else can
take the key — so two replicas never act on one cluster at once. SIGKILL a leader and the key vanishes
with its lease; another replica takes over within ``ttl`` (+ one refresh period).

Sharing out: every replica announces itself under its lease (``Leases.announce``), and the scopes are dealt
round-robin over the live replicas (both sorted), so each replica has a preferred share. A replica takes a
free scope at once when it is in its share, and any free scope that stayed free for ``ttl / 2`` (its
preferred replica is slow or does not want it). It gives a scope up — only between two of that scope's
reconciles (``busy``), and it stops acting on it before the key is deleted — when the scope belongs to
another live replica's share: a replica that joins gets its share within a round or two.
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
        # validity lapsed and came back with the lease intact (a slow loop): only what was skipped is owed
        self.on_resume: Callable[[str], None] = lambda cluster: self.on_gain(cluster)
        self.busy: Callable[[str], bool] = lambda cluster: False  # a reconcile of this scope is running
        self.rounds = 0  # election rounds run (for observers: metrics, tests)
        self.replicas: set[str] = {identity}  # live replicas seen in the last round
        self._announced = 0  # the lease this replica announced itself under
        self._free_since: dict[str, float] = {}

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
                        # let the owner re-queue what it skipped meanwhile (nobody else acted).
                        for cluster in sorted(self.held):
                            self.on_resume(cluster)
                    return True
            except StoreError as e:
                # etcd unreachable or electing a leader: the lease may well survive (a new raft leader
                # extends every lease). Stop acting when validity runs out (leads()), keep the lease and
                # the scopes, and refresh again next round; only a lease etcd says is gone is replaced.
                log.warning("lease refresh failed: %s", e)
                return False
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

    def share(self, scopes: set[str], replicas: set[str]) -> set[str]:
        """The scopes dealt to this replica: round-robin over the sorted replicas."""
        order = sorted(replicas | {self.identity})
        mine = order.index(self.identity)
        return {scope for i, scope in enumerate(sorted(scopes)) if i % len(order) == mine}

    async def _campaign(self) -> None:
        leases = self.store.leases
        if self._announced != self.lease_id:
            await leases.announce(self.identity, self.lease_id)
            self._announced = self.lease_id
        self.replicas = await leases.replicas() | {self.identity}
        holders = await leases.holders()
        share = self.share(self.wanted | set(holders), self.replicas)
        now = self.clock()
        taken: set[str] = set()
        for cluster in sorted(self.wanted - self.held):
            if cluster in holders:
                self._free_since.pop(cluster, None)
                continue
            free_since = self._free_since.setdefault(cluster, now)
            if cluster not in share and now - free_since < self.ttl / 2:
                continue  # another replica's share: leave it the time to take it
            if await leases.acquire(cluster, self.identity, self.lease_id):
                self._free_since.pop(cluster, None)
                self.held.add(cluster)
                taken.add(cluster)
                log.info("%s now leads cluster %s", self.identity, cluster)
                self.on_gain(cluster)
        for cluster in sorted(self.held - taken):
            holder = holders.get(cluster)
            if holder is None or holder[1] != self.lease_id:
                self.held.discard(cluster)
                log.warning("%s lost cluster %s", self.identity, cluster)
            elif cluster not in share and not self.busy(cluster):
                self.held.discard(cluster)  # stop acting first (no await in between: no reconcile starts)
                await leases.release(cluster, self.lease_id)
                log.info("%s hands cluster %s over (another replica's share)", self.identity, cluster)

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
