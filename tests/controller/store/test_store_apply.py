"""Store.apply against a real etcd: atomicity, conflicts, batching, size limits, prune, speed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controller.server.etcd import EmbeddedEtcd
from controller.store import ConflictError, PartialApplyError, Store, StoreUnavailable, TooLargeError
from specs.kinds import parse_resource
from specs.meta import Resource

pytestmark = pytest.mark.anyio


def vm(name: str, cores: int = 1, annotations: dict[str, str] | None = None) -> Resource:
    return parse_resource({
        "apiVersion": "virtplane.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {"cluster": "c1", "cpu": {"cores": cores}, "memory": {"size": "512Mi"}},
    })


def cluster(name: str) -> Resource:
    return parse_resource({"kind": "Cluster", "metadata": {"name": name}, "spec": {}})


def keys(etcdctl: Callable[..., str], prefix: str = "/virtplane/specs/") -> list[str]:
    return [k for k in etcdctl("get", "--prefix", prefix, "--keys-only").split("\n") if k]


def before_txn(store: Store, hook: Callable[[int], Awaitable[None]]) -> None:
    """Run ``hook(n)`` before the store's n-th transaction (1-based): a concurrent writer's turn."""
    real = store.kv.txn
    calls = 0

    async def txn(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await hook(calls)
        return await real(*args, **kwargs)

    store.kv.txn = txn  # type: ignore[method-assign]


async def test_apply_is_one_transaction(store: Store) -> None:
    objects = [cluster("c1"), *(vm(f"vm-{i}") for i in range(50))]
    before = await store.revision()
    result = await store.apply(objects, correlation_id="one")
    assert result.transactions == 1
    assert result.revision == before + 1 == await store.revision()
    assert {c.action for c in result.changes} == {"created"}
    assert {c.after.metadata.resourceVersion for c in result.changes if c.after} == {str(result.revision)}


async def test_dry_run_writes_nothing(store: Store, etcdctl: Callable[..., str]) -> None:
    before = await store.revision()
    result = await store.apply([vm("a"), vm("b")], correlation_id="dry", dry_run=True)
    assert [c.action for c in result.changes] == ["created", "created"] and result.transactions == 0
    assert await store.revision() == before and keys(etcdctl) == []


async def test_concurrent_applier_loses_with_conflict_and_writes_nothing(
    store: Store, etcd_endpoint: str, etcdctl: Callable[..., str]
) -> None:
    await store.apply([vm("shared")], correlation_id="seed")
    other = await Store.connect([etcd_endpoint])

    async def other_writes_first(n: int) -> None:
        if n == 1:  # after our read, before our write
            await other.apply([vm("vm-3"), vm("shared", cores=4)], correlation_id="winner")

    before_txn(store, other_writes_first)
    try:
        with pytest.raises(ConflictError) as err:
            objects = [vm(f"vm-{i}") for i in range(6)] + [vm("shared", cores=2)]
            await store.apply(objects, correlation_id="loser")
    finally:
        await other.close()
    assert (err.value.kind, err.value.name, err.value.expected) == ("VirtualMachine", "vm-3", 0)
    assert err.value.actual and err.value.actual > 0
    assert "VirtualMachine/vm-3" in str(err.value)
    assert keys(etcdctl) == ["/virtplane/specs/VirtualMachine/shared", "/virtplane/specs/VirtualMachine/vm-3"]
    shared = await store.get("VirtualMachine", "shared")
    assert shared is not None and shared.spec.cpu.cores == 4 and shared.metadata.correlationId == "winner"


async def test_batched_apply_when_over_max_txn_ops(store: Store, etcd_endpoint: str) -> None:
    small = await Store.connect([etcd_endpoint], max_txn_ops=4)
    try:
        before = await small.revision()
        result = await small.apply([vm(f"vm-{i:02}") for i in range(10)], correlation_id="b")
    finally:
        await small.close()
    assert result.transactions == 3 and result.revision == before + 3
    assert len((await store.list("VirtualMachine"))[0]) == 10


async def test_batched_apply_when_over_request_bytes(store: Store, etcd_endpoint: str) -> None:
    small = await Store.connect([etcd_endpoint], max_request_bytes=4096 + 8000)
    try:
        objects = [vm(f"vm-{i}", annotations={"note": "x" * 2000}) for i in range(8)]
        result = await small.apply(objects, correlation_id="b")
    finally:
        await small.close()
    assert result.transactions >= 3
    assert len((await store.list("VirtualMachine"))[0]) == 8


async def test_partial_apply_reports_written_and_not_written(
    store: Store, etcd_endpoint: str, etcdctl: Callable[..., str]
) -> None:
    small = await Store.connect([etcd_endpoint], max_txn_ops=4)
    objects = [vm(f"vm-{i:02}") for i in range(10)]

    async def conflict_in_second_batch(n: int) -> None:
        if n == 2:
            await store.apply([vm("vm-05", cores=8)], correlation_id="intruder")

    before_txn(small, conflict_in_second_batch)
    try:
        with pytest.raises(PartialApplyError) as err:
            await small.apply(objects, correlation_id="partial")
    finally:
        await small.close()
    names = [f"vm-{i:02}" for i in range(10)]
    assert err.value.written == tuple(("VirtualMachine", n) for n in names[:4])
    assert err.value.not_written == tuple(("VirtualMachine", n) for n in names[4:])
    assert isinstance(err.value.cause, ConflictError) and err.value.cause.name == "vm-05"
    assert "4 object(s) written" in str(err.value) and "6 not written" in str(err.value)
    stored = [k.rsplit("/", 1)[1] for k in keys(etcdctl)]
    assert stored == [*names[:4], "vm-05"]


async def test_too_large_object_writes_nothing(store: Store, etcd_endpoint: str) -> None:
    small = await Store.connect([etcd_endpoint], max_request_bytes=64 * 1024)
    try:
        before = await small.revision()
        with pytest.raises(TooLargeError) as err:
            await small.apply([vm("ok"), vm("huge", annotations={"blob": "x" * 70_000}), vm("ok2")],
                              correlation_id="big")
        assert (err.value.kind, err.value.name) == ("VirtualMachine", "huge")
        assert err.value.size > 70_000 and err.value.limit < 64 * 1024
        assert await small.revision() == before
    finally:
        await small.close()


async def test_prune_deletes_only_own_source(store: Store, etcdctl: Callable[..., str]) -> None:
    await store.apply([vm("a"), vm("b"), vm("c"), cluster("c1")], correlation_id="1", source="git-a")
    await store.apply([vm("other")], correlation_id="2", source="git-b")
    await store.add_finalizer("VirtualMachine", "c", "virtplane.io/domain")

    dry = await store.apply([vm("a")], correlation_id="3", source="git-a", prune=True, dry_run=True)
    assert sorted((c.kind, c.name) for c in dry.changes if c.action == "deleted") == [
        ("Cluster", "c1"), ("VirtualMachine", "b"), ("VirtualMachine", "c")]
    assert len(keys(etcdctl)) == 5

    before = await store.revision()
    result = await store.apply([vm("a")], correlation_id="4", source="git-a", prune=True)
    assert result.transactions == 1 and result.revision == before + 1
    actions = {(c.kind, c.name): c.action for c in result.changes}
    assert actions == {("VirtualMachine", "a"): "unchanged", ("Cluster", "c1"): "deleted",
                       ("VirtualMachine", "b"): "deleted", ("VirtualMachine", "c"): "deleted"}
    assert [k.rsplit("/", 2)[-1] for k in keys(etcdctl)] == ["a", "c", "other"]
    c = await store.get("VirtualMachine", "c")
    assert c is not None and c.metadata.deletionTimestamp is not None  # held by its finalizer
    again = await store.apply([vm("a")], correlation_id="5", source="git-a", prune=True)
    assert [ch.action for ch in again.changes] == ["unchanged"] and again.transactions == 0
    with pytest.raises(ValueError):
        await store.apply([], correlation_id="6", prune=True)


async def test_apply_10000_new_objects_in_one_transaction(store: Store, etcd: EmbeddedEtcd) -> None:
    objects = [vm(f"vm-{i:05}") for i in range(10_000)]
    before = await store.revision()
    start = time.perf_counter()
    result = await store.apply(objects, correlation_id="bulk", source="bench")
    elapsed = time.perf_counter() - start
    print(f"\napply 10,000 new VirtualMachines: {elapsed:.2f}s, {result.transactions} transaction(s)")
    # ~10 MiB of JSON: more than one request may carry below etcd's 10 MiB WAL entry limit (8 MiB each).
    assert result.transactions == 2 and result.revision == before + 2
    # Speed is measured by bench/apply.py beside raw etcd, not asserted here (a loaded machine fails any bound).
    start = time.perf_counter()
    again = await store.apply(objects, correlation_id="bulk2", source="bench")
    print(f"re-apply 10,000 unchanged: {time.perf_counter() - start:.2f}s")
    assert again.transactions == 0


async def test_etcd_lost_between_batches(etcd_factory: Callable[..., EmbeddedEtcd]) -> None:
    etcd = etcd_factory()
    small = await Store.connect([etcd.endpoint], max_txn_ops=4, timeout=2)

    async def etcd_dies(n: int) -> None:
        if n == 2:
            etcd.stop()

    before_txn(small, etcd_dies)
    try:
        with pytest.raises(PartialApplyError) as err:
            await small.apply([vm(f"vm-{i:02}") for i in range(10)], correlation_id="lost")
        with pytest.raises(StoreUnavailable):
            await small.get("VirtualMachine", "vm-00")
    finally:
        await small.close()
    names = [("VirtualMachine", f"vm-{i:02}") for i in range(10)]
    assert err.value.written == tuple(names[:4])
    assert err.value.uncertain == tuple(names[4:8]) and err.value.not_written == tuple(names[8:])
    assert isinstance(err.value.cause, StoreUnavailable) and "4 unknown" in str(err.value)


async def test_prefetch_is_compared_against_and_a_stale_one_is_read_again(
    store: Store, etcdctl: Callable[..., str]
) -> None:
    """A streamed apply reads whole kinds ahead (Store.prefetch) while its objects arrive. What it read is
    what the apply compares against; when another writer changes an object in between, the write planned
    from the stale read loses its compare-and-swap and the apply is planned again from a fresh read:
    nothing is lost, nothing reported unchanged that changed."""
    await store.apply([cluster("c1"), *(vm(f"vm-{i}") for i in range(30))], correlation_id="seed")
    prefetch = store.prefetch()
    prefetch.want("VirtualMachine")
    read = await prefetch.result()
    assert read is not None and len(read.kinds["VirtualMachine"]) == 30
    # Unchanged against the prefetch: no transaction, and no read of the kind again.
    ranges = 0
    real_range = store.kv.range

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal ranges
        ranges += 1
        return await real_range(*args, **kwargs)

    store.kv.range = counted  # type: ignore[method-assign]
    same = await store.apply([vm(f"vm-{i}") for i in range(30)], correlation_id="same", prefetch=prefetch)
    assert {c.action for c in same.changes} == {"unchanged"} and same.transactions == 0
    assert ranges == 0
    store.kv.range = real_range  # type: ignore[method-assign]

    # Someone else changes vm-3 after the prefetch; then the stream's apply changes vm-3 and vm-4.
    await store.apply([vm("vm-3", cores=3)], correlation_id="other")
    result = await store.apply(
        [vm(f"vm-{i}", cores=4 if i in (3, 4) else 1) for i in range(30)], correlation_id="stream",
        prefetch=prefetch,
    )
    actions = {c.name: c.action for c in result.changes if c.action != "unchanged"}
    assert actions == {"vm-3": "configured", "vm-4": "configured"}
    before = next(c.before for c in result.changes if c.name == "vm-3")
    assert before is not None and before.spec.cpu.cores == 3  # planned from the fresh read
    stored = etcdctl("get", "/virtplane/specs/VirtualMachine/vm-3", "--print-value-only")
    assert '"cores":4' in stored and '"correlationId":"stream"' in stored


async def test_prefetch_that_cannot_read_is_ignored(store: Store) -> None:
    await store.apply([cluster("c1"), *(vm(f"vm-{i}") for i in range(20))], correlation_id="seed")
    prefetch = store.prefetch()
    real_range = store.kv.range

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("etcd went away for a moment")

    store.kv.range = failing  # type: ignore[method-assign]
    prefetch.want("VirtualMachine")
    assert await prefetch.result() is None
    store.kv.range = real_range  # type: ignore[method-assign]
    result = await store.apply([vm(f"vm-{i}") for i in range(20)], correlation_id="again", prefetch=prefetch)
    assert {c.action for c in result.changes} == {"unchanged"}
