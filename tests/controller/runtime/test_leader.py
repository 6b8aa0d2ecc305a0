"""Leader election per cluster on a real etcd: one leader, and takeover after the leader stops."""

from __future__ import annotations

import anyio
import pytest

from controller.runtime.leader import Elector
from controller.store import Store

pytestmark = pytest.mark.anyio


async def _until(predicate, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    start = anyio.current_time()
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)
    return anyio.current_time() - start


async def test_one_leader_per_cluster_shared_out_and_takeover(store: Store) -> None:
    a = Elector(store, "replica-a", ttl=2)
    b = Elector(store, "replica-b", ttl=2)
    a.want({"prod", "lab"})
    b.want({"prod", "lab"})
    both: list[str] = []

    async def watch_overlap() -> None:  # at no instant may both replicas act on one cluster
        while True:
            both.extend(c for c in ("prod", "lab") if a.leads(c) and b.leads(c))
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_overlap)
        scope_a = anyio.CancelScope()

        async def run_a() -> None:
            with scope_a:
                await a.run()

        tg.start_soon(run_a)
        await _until(lambda: a.leads("prod") and a.leads("lab"))  # alone: it takes everything
        tg.start_soon(b.run)
        # b joins: the clusters are dealt round-robin over the sorted replicas (lab -> a, prod -> b).
        await _until(lambda: b.leads("prod") and a.leads("lab"), timeout=10)
        assert not b.leads("lab") and not a.leads("prod")
        assert (await store.leases.holder("prod") or ("", 0))[0] == "replica-b"
        assert not both, f"two leaders at once for {sorted(set(both))}"

        # The leader of lab dies without resigning (its refreshes stop): it stops acting before b starts.
        scope_a.cancel()
        stopped_acting = await _until(lambda: not a.leads("lab"))
        assert stopped_acting <= 1.5  # ttl / 2 after its last refresh
        took_over = await _until(lambda: b.leads("prod") and b.leads("lab"), timeout=10)
        assert took_over <= 2 + 1.0 + 0.5  # lease TTL + one campaign period + slack
        assert not both, f"two leaders at once for {sorted(set(both))}"
        tg.cancel_scope.cancel()


async def test_ten_clusters_spread_over_two_replicas_and_move_when_one_dies(store: Store) -> None:
    clusters = {f"c{i:02d}" for i in range(10)}
    a = Elector(store, "replica-a", ttl=2)
    b = Elector(store, "replica-b", ttl=2)
    a.want(clusters)
    b.want(clusters)
    async with anyio.create_task_group() as tg:
        scope_b = anyio.CancelScope()

        async def run_b() -> None:
            with scope_b:
                await b.run()

        tg.start_soon(a.run)
        tg.start_soon(run_b)
        await _until(lambda: len({c for c in clusters if a.leads(c)}) == 5
                     and len({c for c in clusters if b.leads(c)}) == 5, timeout=10)
        holders = await store.leases.holders()
        assert sorted(holders) == sorted(clusters)
        assert sorted(h for h, _ in holders.values()) == ["replica-a"] * 5 + ["replica-b"] * 5
        scope_b.cancel()  # b dies: its five move to a within the lease TTL
        took = await _until(lambda: all(a.leads(c) for c in clusters), timeout=10)
        assert took <= 2 + 1.0 + 0.5
        assert await store.leases.replicas() == {"replica-a"}
        tg.cancel_scope.cancel()


async def test_resign_hands_over_without_waiting_for_the_lease(store: Store) -> None:
    a = Elector(store, "replica-a", ttl=10)
    b = Elector(store, "replica-b", ttl=10)
    a.want({"prod"})
    b.want({"prod"})
    async with anyio.create_task_group() as tg:
        scope_a = anyio.CancelScope()

        async def run_a() -> None:
            with scope_a:
                await a.run()

        tg.start_soon(run_a)
        await _until(lambda: a.leads("prod"))
        tg.start_soon(b.run)
        scope_a.cancel()
        await a.resign()  # what a replica does on a graceful shutdown
        assert not a.leads("prod")
        took_over = await _until(lambda: b.leads("prod"), timeout=8)
        assert took_over < 5.0  # well inside the 10 s TTL: the key went with the revoked lease
        tg.cancel_scope.cancel()
