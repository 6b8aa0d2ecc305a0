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


async def test_one_leader_per_cluster_and_takeover(store: Store) -> None:
    a = Elector(store, "replica-a", ttl=2)
    b = Elector(store, "replica-b", ttl=2)
    a.want({"prod", "lab"})
    b.want({"prod", "lab"})
    async with anyio.create_task_group() as tg:
        scope_a = anyio.CancelScope()

        async def run_a() -> None:
            with scope_a:
                await a.run()

        tg.start_soon(run_a)
        await _until(lambda: a.leads("prod") and a.leads("lab"))
        tg.start_soon(b.run)
        await _until(lambda: b.rounds >= 3)  # b campaigns several rounds
        assert not b.leads("prod") and not b.leads("lab"), "two leaders for one cluster"
        assert (await store.leases.holder("prod") or ("", 0))[0] == "replica-a"

        # The leader dies without resigning (its refreshes stop): it must stop acting before b starts.
        scope_a.cancel()
        stopped_acting = await _until(lambda: not a.leads("prod"))
        assert stopped_acting <= 1.5  # ttl / 2 after its last refresh
        took_over = await _until(lambda: b.leads("prod") and b.leads("lab"), timeout=10)
        assert took_over <= 2 + 1.0 + 0.5  # lease TTL + one campaign period + slack
        assert not a.leads("prod")
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
