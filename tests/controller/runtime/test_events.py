"""EventSink on a real etcd: queued events are written in batches, and what is queued when the sink stops is
still written."""

from __future__ import annotations

import anyio
import pytest

from controller.runtime.events import EventSink
from controller.store import Store
from specs.event import Event, InvolvedObject

pytestmark = pytest.mark.anyio


def event(i: int) -> Event:
    return Event(type="Normal", reason="PlanExecuted", message=f"step {i}",
                 involvedObject=InvolvedObject(kind="VirtualMachine", name=f"vm-{i}", uid=f"uid-{i}"),
                 correlationId="c-1", source="test")


async def stored_events(store: Store) -> int:
    """This test's events in etcd (an earlier test's manager may still be writing its own)."""
    kvs, _ = await store.kv.range_prefix(b"/virtplane/events/")
    return sum(1 for kv in kvs if b'"correlationId":"c-1"' in kv.value)


async def test_events_are_written_in_batches_and_flushed_on_stop(store: Store) -> None:
    sink = EventSink(store, max_batch=100, linger=0.05)
    assert not sink.put(event(0))  # not running: the caller writes it itself
    async with anyio.create_task_group() as tg:
        tg.start_soon(sink.run)
        with anyio.fail_after(5):
            while not sink.running:
                await anyio.sleep(0.001)
        assert all(sink.put(event(i)) for i in range(250))
        with anyio.fail_after(10):
            while await stored_events(store) < 250:
                await anyio.sleep(0.02)
        assert sink.batches == 3  # 100 + 100 + 50, not 250 transactions
        for i in range(250, 260):
            sink.put(event(i))
        tg.cancel_scope.cancel()  # before the linger is over: the stop flushes them
    assert await stored_events(store) == 260
    names = {e.involvedObject.name for e in await store.list_events()}
    assert {f"vm-{i}" for i in range(260)} <= names
