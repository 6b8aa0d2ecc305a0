"""Store semantics against a real etcd: metadata, CAS, finalizers, status, events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from controller.store import ConflictError, NotFoundError, Store, StoreUnavailable
from specs.event import Event, InvolvedObject
from specs.kinds import parse_resource
from specs.meta import Resource
from specs.selector import LabelSelector
from specs.vm import VirtualMachineStatus

pytestmark = pytest.mark.anyio


def vm(name: str, cores: int = 1, labels: dict[str, str] | None = None, **meta: Any) -> Resource:
    return parse_resource({
        "apiVersion": "virtplane.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": labels or {}, **meta},
        "spec": {"cluster": "c1", "cpu": {"cores": cores}, "memory": {"size": "512Mi"}},
    })


async def test_create_sets_uid_generation_timestamp_and_resource_version(store: Store) -> None:
    result = await store.apply([vm("web-1")], correlation_id="cid-1", source="git")
    (change,) = result.changes
    assert change.action == "created" and change.before is None
    got = await store.get("VirtualMachine", "web-1")
    assert got is not None
    meta = got.metadata
    assert meta.uid and len(meta.uid) == 36
    assert meta.generation == 1
    assert meta.creationTimestamp is not None and meta.creationTimestamp.tzinfo is not None
    assert meta.resourceVersion == str(result.revision)
    assert meta.correlationId == "cid-1" and meta.source == "git"
    assert change.after == got


async def test_generation_bumps_only_on_spec_change(store: Store) -> None:
    await store.apply([vm("web-1")], correlation_id="a")
    first = await store.get("VirtualMachine", "web-1")
    r = await store.apply([vm("web-1", labels={"tier": "front"})], correlation_id="b")
    assert [c.action for c in r.changes] == ["configured"]
    relabeled = await store.get("VirtualMachine", "web-1")
    assert relabeled is not None and first is not None
    assert relabeled.metadata.generation == 1
    assert relabeled.metadata.labels == {"tier": "front"}
    assert relabeled.metadata.uid == first.metadata.uid
    assert relabeled.metadata.creationTimestamp == first.metadata.creationTimestamp
    assert relabeled.metadata.correlationId == "b"
    r = await store.apply([vm("web-1", cores=2, labels={"tier": "front"})], correlation_id="c")
    respec = await store.get("VirtualMachine", "web-1")
    assert respec is not None and respec.metadata.generation == 2
    assert int(respec.metadata.resourceVersion or 0) == r.revision
    before = await store.revision()
    r = await store.apply([vm("web-1", cores=2, labels={"tier": "front"})], correlation_id="d")
    assert [c.action for c in r.changes] == ["unchanged"] and r.transactions == 0
    assert await store.revision() == before
    still = await store.get("VirtualMachine", "web-1")
    assert still is not None and still.metadata.correlationId == "c"


async def test_resource_version_precondition(store: Store) -> None:
    r = await store.apply([vm("web-1")], correlation_id="a")
    rv = r.changes[0].after.metadata.resourceVersion  # type: ignore[union-attr]
    await store.apply([vm("web-1", cores=2)], correlation_id="b")
    with pytest.raises(ConflictError) as err:
        await store.apply([vm("web-1", cores=3, resourceVersion=rv)], correlation_id="c")
    assert (err.value.kind, err.value.name, err.value.expected) == ("VirtualMachine", "web-1", int(str(rv)))
    assert err.value.actual == int(str(rv)) + 1
    assert "VirtualMachine/web-1" in str(err.value)
    got = await store.get("VirtualMachine", "web-1")
    assert got is not None and got.spec.cpu.cores == 2
    fresh = vm("web-1", cores=3, resourceVersion=got.metadata.resourceVersion)
    ok = await store.apply([fresh], correlation_id="d")
    assert ok.changes[0].action == "configured"


async def test_list_with_selector_and_revision(store: Store) -> None:
    objects = [vm("a", labels={"app": "web"}), vm("b", labels={"app": "db"}), vm("c")]
    await store.apply(objects, correlation_id="x")
    items, revision = await store.list("VirtualMachine")
    assert [i.metadata.name for i in items] == ["a", "b", "c"]
    assert revision == await store.revision()
    web, _ = await store.list("VirtualMachine", LabelSelector.parse("app=web"))
    assert [i.metadata.name for i in web] == ["a"]
    assert (await store.list("Host"))[0] == []


async def test_delete_without_finalizers_removes_spec_and_status(store: Store) -> None:
    await store.apply([vm("web-1")], correlation_id="a")
    await store.put_status("VirtualMachine", "web-1", VirtualMachineStatus(phase="Running"), 0)
    removed = await store.delete("VirtualMachine", "web-1", correlation_id="del")
    assert removed is not None and removed.metadata.name == "web-1"
    assert await store.get("VirtualMachine", "web-1") is None
    assert await store.get_status("VirtualMachine", "web-1") == (None, 0)
    assert await store.delete("VirtualMachine", "web-1", correlation_id="again") is None


async def test_delete_with_stale_resource_version_conflicts(store: Store) -> None:
    r = await store.apply([vm("web-1")], correlation_id="a")
    await store.apply([vm("web-1", cores=2)], correlation_id="b")
    with pytest.raises(ConflictError):
        await store.delete("VirtualMachine", "web-1", correlation_id="c", resource_version=r.revision)
    assert await store.get("VirtualMachine", "web-1") is not None


async def test_finalizers_hold_deletion_until_the_last_is_removed(store: Store) -> None:
    await store.apply([vm("web-1")], correlation_id="a")
    await store.add_finalizer("VirtualMachine", "web-1", "virtplane.io/domain")
    held = await store.add_finalizer("VirtualMachine", "web-1", "virtplane.io/disks")
    assert held.metadata.finalizers == ("virtplane.io/domain", "virtplane.io/disks")
    assert held.metadata.generation == 1
    marked = await store.delete("VirtualMachine", "web-1", correlation_id="del-1")
    assert marked is not None and marked.metadata.deletionTimestamp is not None
    got = await store.get("VirtualMachine", "web-1")
    assert got is not None and got.metadata.deletionTimestamp is not None
    assert got.metadata.generation == 1 and got.metadata.correlationId == "del-1"
    assert got.spec == held.spec
    left = await store.remove_finalizer("VirtualMachine", "web-1", "virtplane.io/domain")
    assert left is not None and left.metadata.finalizers == ("virtplane.io/disks",)
    assert await store.remove_finalizer("VirtualMachine", "web-1", "virtplane.io/disks") is None
    assert await store.get("VirtualMachine", "web-1") is None


async def test_remove_last_finalizer_without_deletion_keeps_object(store: Store) -> None:
    await store.apply([vm("web-1")], correlation_id="a")
    await store.add_finalizer("VirtualMachine", "web-1", "f")
    kept = await store.remove_finalizer("VirtualMachine", "web-1", "f")
    assert kept is not None and kept.metadata.finalizers == ()
    with pytest.raises(NotFoundError):
        await store.add_finalizer("VirtualMachine", "nope", "f")


async def test_concurrent_finalizer_adds_both_land(store: Store, etcd_endpoint: str) -> None:
    await store.apply([vm("web-1")], correlation_id="a")
    other = await Store.connect([etcd_endpoint])
    try:
        await asyncio.gather(*(s.add_finalizer("VirtualMachine", "web-1", f"f{i}")
                               for i, s in enumerate([store, other] * 4)))
    finally:
        await other.close()
    got = await store.get("VirtualMachine", "web-1")
    assert got is not None and sorted(got.metadata.finalizers) == [f"f{i}" for i in range(8)]


async def test_status_compare_and_swap_leaves_spec_alone(store: Store) -> None:
    await store.apply([vm("web-1")], correlation_id="a")
    spec_before = await store.get("VirtualMachine", "web-1")
    rev1 = await store.put_status("VirtualMachine", "web-1", VirtualMachineStatus(phase="Pending"), 0)
    status, rev = await store.get_status("VirtualMachine", "web-1")
    assert isinstance(status, VirtualMachineStatus) and status.phase == "Pending" and rev == rev1
    with pytest.raises(ConflictError) as err:
        await store.put_status("VirtualMachine", "web-1", VirtualMachineStatus(phase="Running"), 0)
    assert err.value.actual == rev1
    rev2 = await store.put_status("VirtualMachine", "web-1", VirtualMachineStatus(phase="Running"), rev1)
    with pytest.raises(ConflictError):  # a stale writer loses
        await store.put_status("VirtualMachine", "web-1", VirtualMachineStatus(phase="Failed"), rev1)
    status, rev = await store.get_status("VirtualMachine", "web-1")
    assert status is not None and status.phase == "Running" and rev == rev2
    assert await store.get("VirtualMachine", "web-1") == spec_before  # same resourceVersion, generation
    assert (await store.list_status("VirtualMachine")).keys() == {"web-1"}
    with pytest.raises(NotFoundError):
        await store.put_status("VirtualMachine", "ghost", VirtualMachineStatus(), 0)


def _event(name: str, reason: str, cid: str) -> Event:
    return Event(reason=reason, message=f"{reason} {name}", correlationId=cid, source="test",
                 involvedObject=InvolvedObject(kind="VirtualMachine", name=name))


async def test_events_share_a_lease_and_filter(store: Store, etcdctl: Callable[..., str]) -> None:
    for i in range(3):
        await store.emit_event(_event("web-1", "Started", f"cid-{i}"))
    await store.emit_event(_event("web-2", "Stopped", "cid-0"))
    everything = await store.list_events()
    assert [e.reason for e in everything] == ["Started"] * 3 + ["Stopped"]
    assert all(e.metadata.name and e.firstTimestamp for e in everything)
    assert [e.correlationId for e in await store.list_events(involved=("VirtualMachine", "web-1"))] == [
        "cid-0", "cid-1", "cid-2"]
    assert len(await store.list_events(correlation_id="cid-0")) == 2
    assert [e.correlationId for e in await store.list_events(limit=2)] == ["cid-2", "cid-0"]

    kvs = await store.kv.range_prefix(b"/virtplane/events/")
    leases = {kv.lease for kv in kvs[0]}
    assert len(leases) == 1 and 0 not in leases  # every event on a lease, one lease for all
    lease_hex = f"{leases.pop():x}"
    assert lease_hex in etcdctl("lease", "list")
    ttl = etcdctl("lease", "timetolive", lease_hex, "--keys")
    assert "/virtplane/events/" in ttl
    granted = int(ttl.split("granted with TTL(")[1].split("s)")[0])
    assert 3600 <= granted <= 3960


async def test_event_lease_expires_events(etcd_endpoint: str, store: Store) -> None:
    short = await Store.connect([etcd_endpoint], event_ttl=1)
    try:
        await short.emit_event(_event("web-1", "Started", "x"))
        assert len(await short.list_events()) == 1
        deadline = asyncio.get_running_loop().time() + 15
        while await short.list_events():
            assert asyncio.get_running_loop().time() < deadline, "event did not expire with its lease"
            await asyncio.sleep(0.2)
    finally:
        await short.close()


async def test_unreachable_etcd_is_store_unavailable() -> None:
    from controller.server.etcd import free_port

    with pytest.raises(StoreUnavailable):
        await Store.connect([f"http://127.0.0.1:{free_port()}"], timeout=2)
