"""Store.watch against a real etcd: order, parts, resume after restart, re-list after compaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from controller.server.etcd import EmbeddedEtcd
from controller.store import SPECS, STATUS, Store, StoreUnavailable, WatchEvent
from specs.event import Event, InvolvedObject
from specs.kinds import parse_resource
from specs.meta import Resource
from specs.vm import VirtualMachineStatus

pytestmark = pytest.mark.anyio


def vm(name: str, cores: int = 1) -> Resource:
    return parse_resource({
        "apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"cluster": "c1", "cpu": {"cores": cores}, "memory": {"size": "512Mi"}},
    })


async def take(events: AsyncIterator[WatchEvent], n: int, timeout: float = 20) -> list[WatchEvent]:
    async def collect() -> list[WatchEvent]:
        return [await anext(events) for _ in range(n)]

    return await asyncio.wait_for(collect(), timeout)


def seen(events: list[WatchEvent]) -> list[tuple[str, str, int]]:
    return [(e.type, e.name, e.mod_revision) for e in events]


async def retry(what: Callable[[], Any], timeout: float = 20) -> Any:
    """Poll ``what`` until etcd answers again (after a restart) or the deadline passes."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await what()
        except StoreUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_watch_delivers_specs_and_status_in_order(store: Store) -> None:
    start = await store.revision() + 1
    async with contextlib.aclosing(store.watch([SPECS, STATUS], start)) as events:
        r1 = await store.apply([vm("a"), vm("b")], correlation_id="1")
        await store.emit_event(Event(reason="Ignored", involvedObject=InvolvedObject(kind="X", name="y")))
        r2 = await store.put_status("VirtualMachine", "a", VirtualMachineStatus(phase="Running"), 0)
        await store.delete("VirtualMachine", "b", correlation_id="2")
        got = await take(events, 4)
    assert [(e.type, e.part, e.name, e.mod_revision) for e in got] == [
        ("PUT", "spec", "a", r1.revision), ("PUT", "spec", "b", r1.revision),
        ("PUT", "status", "a", r2), ("DELETE", "spec", "b", r2 + 1)]
    assert isinstance(got[0].value, Resource) and got[0].value.metadata.resourceVersion == str(r1.revision)
    assert isinstance(got[2].value, VirtualMachineStatus) and got[2].value.phase == "Running"
    assert got[3].value is None and got[0].kind == "VirtualMachine"
    assert not any(e.synthetic for e in got)


async def test_watch_events_prefix_decodes_events(store: Store) -> None:
    start = await store.revision() + 1
    async with contextlib.aclosing(store.watch(["/virtplane/events/"], start)) as events:
        await store.apply([vm("a")], correlation_id="1")
        emitted = await store.emit_event(
            Event(reason="Started", correlationId="c",
                  involvedObject=InvolvedObject(kind="VirtualMachine", name="a"))
        )
        (got,) = await take(events, 1)
    assert got.part == "event" and got.value == emitted


async def test_watch_is_cancellation_safe(store: Store) -> None:
    start = await store.revision() + 1
    received: list[WatchEvent] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for event in store.watch([SPECS], start):
            received.append(event)
            first.set()

    task = asyncio.create_task(consume())
    await store.apply([vm("a")], correlation_id="1")
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.name for e in received] == ["a"]


async def test_watch_resumes_after_etcd_restart(etcd_factory: Callable[..., EmbeddedEtcd]) -> None:
    etcd = etcd_factory()
    store = await Store.connect([etcd.endpoint], timeout=2)
    received: list[WatchEvent] = []
    try:
        start = await store.revision() + 1
        expected: list[tuple[str, str, int]] = []

        async def consume() -> None:
            async for event in store.watch([SPECS], start):
                received.append(event)

        async def until(count: int) -> None:
            deadline = asyncio.get_running_loop().time() + 20
            while len(received) < count:
                assert asyncio.get_running_loop().time() < deadline, seen(received)
                await asyncio.sleep(0.02)

        task = asyncio.create_task(consume())
        for name in ("a", "b"):
            r = await store.apply([vm(name)], correlation_id=name)
            expected.append(("PUT", name, r.revision))
        await until(2)

        etcd.stop()  # the consumer is waiting on the stream when etcd goes away
        etcd.start()
        for name in ("c", "d"):
            r = await retry(lambda n=name: store.apply([vm(n)], correlation_id=n))  # type: ignore[misc]
            expected.append(("PUT", name, r.revision))
        r = await retry(lambda: store.apply([vm("a", cores=2)], correlation_id="a2"))
        expected.append(("PUT", "a", r.revision))
        await until(5)

        # And once more while the consumer is slow: writes land while the old stream is dead.
        etcd.stop()
        etcd.start()
        rev = await retry(lambda: store.delete("VirtualMachine", "b", correlation_id="del"))
        assert rev is not None
        expected.append(("DELETE", "b", await store.revision()))
        await until(6)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await store.close()
    assert seen(received) == expected  # each once, in order
    assert not any(e.synthetic for e in received)


async def test_watch_relists_after_compaction(etcd_factory: Callable[..., EmbeddedEtcd]) -> None:
    etcd = etcd_factory()
    store = await Store.connect([etcd.endpoint], timeout=2)
    try:
        start = await store.revision() + 1
        await store.apply([vm("a"), vm("b"), vm("c")], correlation_id="1")
        await store.apply([vm("old", cores=1)], correlation_id="1b")
        events = store.watch([SPECS], start)
        try:
            first = await take(events, 4)
            assert [e.name for e in first] == ["a", "b", "c", "old"]
            # The consumer is not pulling: the watcher sits at its last yield. etcd restarts,
            # history moves on and is compacted past what the watcher has delivered.
            etcd.stop()
            etcd.start()
            await retry(lambda: store.revision())
            a2 = await store.apply([vm("a", cores=2)], correlation_id="2")
            await store.delete("VirtualMachine", "b", correlation_id="3")
            d = await store.apply([vm("d")], correlation_id="4")
            await store.apply([vm("e")], correlation_id="5")
            await store.delete("VirtualMachine", "e", correlation_id="6")  # born and gone unseen
            await store.compact(await store.revision())
            relisted = await take(events, 3)
            assert {(e.type, e.name, e.mod_revision) for e in relisted} == {
                ("PUT", "a", a2.revision), ("PUT", "d", d.revision), ("DELETE", "b", await store.revision())}
            assert all(e.synthetic for e in relisted)
            live = await store.apply([vm("f")], correlation_id="7")
            (after,) = await take(events, 1)
            assert (after.type, after.name, after.mod_revision, after.synthetic) == (
                "PUT", "f", live.revision, False)
        finally:
            await events.aclose()
        state: dict[str, int] = {}
        for e in first + relisted + [after]:
            if e.type == "PUT":
                state[e.name] = e.mod_revision
            else:
                state.pop(e.name)
        items, _ = await store.list("VirtualMachine")
        assert state == {i.metadata.name: int(i.metadata.resourceVersion or 0) for i in items}
    finally:
        await store.close()


async def test_watch_from_compacted_start_with_known_keys(etcd_factory: Callable[..., EmbeddedEtcd]) -> None:
    etcd = etcd_factory()
    async with await Store.connect([etcd.endpoint]) as store:
        await _compacted_start_with_known_keys(store)


async def _compacted_start_with_known_keys(store: Store) -> None:
    await store.apply([vm("a"), vm("b")], correlation_id="1")
    items, listed_at = await store.list("VirtualMachine")
    known = {f"{SPECS}VirtualMachine/{i.metadata.name}": int(i.metadata.resourceVersion or 0) for i in items}
    await store.delete("VirtualMachine", "a", correlation_id="2")
    c = await store.apply([vm("c")], correlation_id="3")
    await store.compact(await store.revision())
    async with contextlib.aclosing(store.watch([SPECS], listed_at + 1, known=known)) as events:
        got = await take(events, 2)
    assert {(e.type, e.name) for e in got} == {("DELETE", "a"), ("PUT", "c")}
    assert [e.mod_revision for e in got if e.name == "c"] == [c.revision]
