"""Work queue semantics (controller-runtime's): dedup, one worker per key, re-run once, backoff, shutdown.

Time is a FakeClock; tasks are settled with ``wait_all_tasks_blocked`` — nothing here sleeps.
"""

from __future__ import annotations

import random
from collections import Counter

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from controller.common.errors import ConflictError, SpecInvalid, TransientError
from controller.runtime.workqueue import Backoff, FakeClock, Result, WorkQueue, run_workers

pytestmark = pytest.mark.anyio


def _queue(clock: FakeClock | None = None, **backoff: float) -> WorkQueue[str]:
    return WorkQueue(clock=clock or FakeClock(), backoff=Backoff(**backoff), rng=random.Random(7))


async def test_add_deduplicates_queued_keys() -> None:
    q = _queue()
    for key in ("a", "b", "a", "a", "b", "c"):
        q.add(key)
    assert len(q) == 3
    assert [await q.get(), await q.get(), await q.get()] == ["a", "b", "c"]
    assert q.metrics().adds == 3


async def test_key_added_while_processing_runs_once_more_after_done() -> None:
    q = _queue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")
    q.add("a")
    assert len(q) == 0, "a key being processed must not be handed out again"
    q.done("a")
    assert len(q) == 1
    assert await q.get() == "a"
    q.done("a")
    assert len(q) == 0


async def test_many_workers_never_process_one_key_concurrently() -> None:
    q: WorkQueue[str] = WorkQueue(rng=random.Random(1))
    active: Counter[str] = Counter()
    max_active: Counter[str] = Counter()
    runs: Counter[str] = Counter()
    keys = [f"vm-{i}" for i in range(5)]

    async def handler(key: str) -> Result:
        active[key] += 1
        max_active[key] = max(max_active[key], active[key])
        runs[key] += 1
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
            if runs[key] < 20:
                q.add(key)  # changes arrive while the key is being processed
        active[key] -= 1
        return Result()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_workers, q, 16, handler)
        for key in keys * 4:
            q.add(key)
        with anyio.fail_after(10):
            while any(runs[k] < 20 for k in keys) or len(q) or q.metrics().processing:
                await wait_all_tasks_blocked()
        await q.shutdown()
    assert set(max_active.values()) == {1}
    assert all(runs[k] == 20 for k in keys), runs


async def test_backoff_grows_exponentially_within_jitter_bounds_and_caps() -> None:
    backoff = Backoff(base=0.005, cap=60.0, jitter=0.1)
    rng = random.Random(3)
    for failures in range(1, 30):
        nominal = min(60.0, 0.005 * 2 ** (failures - 1))
        for _ in range(50):
            d = backoff.delay(failures, rng)
            assert nominal * 0.9 <= d <= min(60.0, nominal * 1.1)
    spread = {round(backoff.delay(5, rng), 6) for _ in range(20)}
    assert len(spread) > 10, "jitter must spread retries"


async def test_rate_limited_requeue_waits_for_backoff_and_forget_resets_it() -> None:
    clock = FakeClock()
    q = _queue(clock, base=1.0, cap=8.0, jitter=0.0)
    delays = [q.add_rate_limited("a") for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert q.num_requeues("a") == 5
    got: list[str | None] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: _collect(q, got))
        await wait_all_tasks_blocked()
        clock.advance(0.5)
        await wait_all_tasks_blocked()
        assert got == [], "handed out before its backoff expired"
        clock.advance(0.5)
        await wait_all_tasks_blocked()
        assert got == ["a"]
    q.done("a")
    q.forget("a")
    assert q.add_rate_limited("a") == 1.0
    assert q.metrics().retries == 6


async def _collect(q: WorkQueue[str], into: list[str | None]) -> None:
    into.append(await q.get())


async def test_add_after_orders_by_deadline_and_keeps_the_earliest() -> None:
    clock = FakeClock()
    q = _queue(clock)
    q.add_after("c", 3)
    q.add_after("a", 1)
    q.add_after("b", 2)
    q.add_after("a", 10)  # later deadline for a waiting key: ignored
    q.add_after("d", 10)
    q.add_after("d", 0.5)  # earlier deadline wins
    assert len(q) == 0 and q.metrics().waiting == 4
    clock.advance(3)
    order = [await q.get() for _ in range(4)]
    assert order == ["d", "a", "b", "c"]
    clock.advance(100)
    assert len(q) == 0 and q.metrics().waiting == 0, "superseded deadlines must not add the key twice"


async def test_shutdown_waits_for_in_flight_keys_and_stops_handing_out() -> None:
    q = _queue()
    q.add("a")
    q.add("b")
    assert await q.get() == "a"
    finished = anyio.Event()

    async def shut() -> None:
        await q.shutdown()
        finished.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(shut)
        await wait_all_tasks_blocked()
        assert not finished.is_set(), "shutdown returned while 'a' was still processing"
        q.done("a")
    assert finished.is_set()
    assert await q.get() is None
    q.add("c")
    assert len(q) == 0


async def test_workers_requeue_by_outcome() -> None:
    clock = FakeClock()
    q = _queue(clock, base=1.0, cap=60.0, jitter=0.0)
    calls: Counter[str] = Counter()

    async def handler(key: str) -> Result | None:
        calls[key] += 1
        if key == "transient" and calls[key] < 3:
            raise TransientError("connection reset")
        if key == "retry-after" and calls[key] == 1:
            raise TransientError("busy with a job", retry_after=30)
        if key == "conflict" and calls[key] == 1:
            raise ConflictError("domain is already running")
        if key == "terminal":
            raise SpecInvalid("bad XML")
        if key == "periodic" and calls[key] == 1:
            return Result(requeue_after=10)
        if key == "bug" and calls[key] == 1:
            raise RuntimeError("handler bug")
        return None

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_workers, q, 4, handler)
        for key in ("transient", "retry-after", "conflict", "terminal", "periodic", "bug"):
            q.add(key)
        await wait_all_tasks_blocked()
        assert calls == Counter({k: 1 for k in calls}) | {"conflict": 2}
        clock.advance(1)  # first backoff of "transient" and "bug"
        await wait_all_tasks_blocked()
        assert (calls["transient"], calls["bug"]) == (2, 2)
        clock.advance(2)  # second backoff doubles
        await wait_all_tasks_blocked()
        assert calls["transient"] == 3
        clock.advance(7)
        await wait_all_tasks_blocked()
        assert calls["periodic"] == 2 and calls["retry-after"] == 1
        clock.advance(20)
        await wait_all_tasks_blocked()
        assert calls["retry-after"] == 2
        clock.advance(1000)
        await wait_all_tasks_blocked()
        assert calls["terminal"] == 1, "terminal errors are not retried"
        assert q.num_requeues("transient") == 0, "success forgets the backoff"
        await q.shutdown()
    m = q.metrics()
    assert m.processing == 0 and m.processed == sum(calls.values())


async def test_scheduled_covers_queued_processing_and_delayed_keys() -> None:
    q = _queue()
    q.add("a")
    q.add_after("b", 5.0)
    assert q.scheduled("a") and q.scheduled("b") and not q.scheduled("c")
    assert await q.get() == "a"
    assert q.scheduled("a")  # being processed
    q.done("a")
    assert not q.scheduled("a")
