"""A work queue with controller-runtime semantics, on anyio.

- ``add(key)`` de-duplicates: a key waits in the queue at most once.
- ``get()`` never hands a key to a second worker while one is processing it; a key added during processing
  is queued again once, when the worker calls ``done(key)``.
- ``add_rate_limited(key)`` re-adds after a per-key exponential backoff with jitter (base 5 ms, cap 60 s by
  default); ``forget(key)`` resets the key's backoff after a success. ``add_after(key, delay)`` adds later
  (the earliest pending deadline of a key wins).
- ``shutdown()`` stops handing out keys, drops delayed ones and waits for in-flight keys to be done.
- Time comes from an injectable :class:`Clock`; :class:`FakeClock` lets tests advance time without sleeping.

:func:`run_workers` runs N workers in a task group, each calling ``handler(key) -> Result`` and requeueing by
the outcome: ``Result(requeue=True)`` backs off, ``Result(requeue_after=s)`` comes back in s seconds,
:class:`TransientError` backs off (or waits its ``retry_after``), :class:`ConflictError` requeues at once
(then backs off if it repeats),
:class:`TerminalError` is logged and not requeued.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import anyio

from controller.common.errors import ConflictError, TerminalError, TransientError

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class Clock(Protocol):
    def now(self) -> float: ...

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        """Return when ``event`` is set or, if given, when ``now() >= deadline`` (whichever comes first)."""


class MonotonicClock:
    """The event loop's clock."""

    def now(self) -> float:
        return anyio.current_time()

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        if deadline is None:
            await event.wait()
            return
        with anyio.move_on_after(max(0.0, deadline - self.now())):
            await event.wait()


class FakeClock:
    """A clock that moves only when told: ``advance(seconds)`` wakes the waiters whose deadline passed."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0

    def now(self) -> float:
        return self._now

    async def wait(self, event: anyio.Event, deadline: float | None) -> None:
        if deadline is not None:
            if deadline <= self._now:
                return
            self._seq += 1
            # Setting the caller's own event at the deadline is enough: callers re-check state on wakeup.
            heapq.heappush(self._timers, (deadline, self._seq, event))
        await event.wait()

    def advance(self, seconds: float) -> None:
        self._now += seconds
        while self._timers and self._timers[0][0] <= self._now:
            heapq.heappop(self._timers)[2].set()


@dataclass(frozen=True)
class Backoff:
    """Per-key exponential backoff: ``base * 2**(failures-1)`` capped at ``cap``, times 1±``jitter``."""

    base: float = 0.005
    cap: float = 60.0
    jitter: float = 0.1

    def delay(self, failures: int, rng: random.Random) -> float:
        raw = min(self.cap, self.base * 2.0 ** min(failures - 1, 64))
        return min(self.cap, raw * (1.0 + rng.uniform(-self.jitter, self.jitter)))


@dataclass(frozen=True)
class QueueMetrics:
    adds: int  # add() calls that queued a key (de-duplicated ones excluded)
    retries: int  # add_rate_limited() calls
    depth: int  # keys ready to be handed out
    waiting: int  # keys scheduled for later (add_after / backoff)
    processing: int  # keys handed out and not yet done
    processed: int  # done() calls
    processing_seconds_total: float
    processing_seconds_max: float
    queue_seconds_max: float  # longest time a key waited between becoming ready and get()


class WorkQueue(Generic[K]):
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock: Clock = clock or MonotonicClock()
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._ready: deque[K] = deque()
        self._ready_since: dict[K, float] = {}
        self._dirty: set[K] = set()  # queued, or to be queued again when done
        self._processing: dict[K, float] = {}  # key -> start time
        self._delayed: list[tuple[float, int, K]] = []
        self._delayed_at: dict[K, float] = {}
        self._failures: dict[K, int] = {}
        self._seq = 0
        self._changed = anyio.Event()
        self._shutting_down = False
        self._adds = self._retries = self._processed = 0
        self._proc_total = self._proc_max = self._queue_max = 0.0

    # ------------------------------------------------------------------ producers

    def add(self, key: K) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._adds += 1
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._ready_since[key] = self._clock.now()
            self._notify()

    def add_after(self, key: K, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        deadline = self._clock.now() + delay
        if self._delayed_at.get(key, float("inf")) <= deadline:
            return
        self._seq += 1
        self._delayed_at[key] = deadline
        heapq.heappush(self._delayed, (deadline, self._seq, key))
        self._notify()

    def add_rate_limited(self, key: K) -> float:
        """Re-add after the key's next backoff delay; returns the delay chosen."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self._retries += 1
        delay = self._backoff.delay(failures, self._rng)
        self.add_after(key, delay)
        return delay

    def mark_failure(self, key: K) -> None:
        """Count a failure for ``key`` without scheduling it (the caller re-adds it itself)."""
        self._failures[key] = self._failures.get(key, 0) + 1

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: K) -> int:
        return self._failures.get(key, 0)

    def scheduled(self, key: K) -> bool:
        """Whether ``key`` will be handed out again without anyone adding it: queued, being processed
        (a change meanwhile re-queues it), or waiting for its time."""
        return key in self._dirty or key in self._processing or key in self._delayed_at

    # ------------------------------------------------------------------ consumers

    async def get(self) -> K | None:
        """The next ready key, waiting if needed; None once the queue is shut down."""
        while True:
            if self._shutting_down:
                return None
            self._promote_due()
            if self._ready:
                key = self._ready.popleft()
                now = self._clock.now()
                self._queue_max = max(self._queue_max, now - self._ready_since.pop(key, now))
                self._dirty.discard(key)
                self._processing[key] = now
                return key
            event = self._changed
            await self._clock.wait(event, self._delayed[0][0] if self._delayed else None)

    def done(self, key: K) -> None:
        started = self._processing.pop(key, None)
        if started is not None:
            elapsed = self._clock.now() - started
            self._processed += 1
            self._proc_total += elapsed
            self._proc_max = max(self._proc_max, elapsed)
        if key in self._dirty and not self._shutting_down:
            self._ready.append(key)
            self._ready_since[key] = self._clock.now()
        self._notify()

    # ------------------------------------------------------------------ lifecycle and introspection

    async def shutdown(self, *, drain: bool = True) -> None:
        """Stop handing out keys, drop delayed and queued ones; with ``drain`` wait for in-flight keys."""
        self._shutting_down = True
        self._ready.clear()
        self._dirty.clear()
        self._delayed.clear()
        self._delayed_at.clear()
        self._notify()
        while drain and self._processing:
            event = self._changed
            await event.wait()

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        return len(self._ready)

    def metrics(self) -> QueueMetrics:
        return QueueMetrics(
            adds=self._adds,
            retries=self._retries,
            depth=len(self._ready),
            waiting=len(self._delayed_at),
            processing=len(self._processing),
            processed=self._processed,
            processing_seconds_total=self._proc_total,
            processing_seconds_max=self._proc_max,
            queue_seconds_max=self._queue_max,
        )

    def _promote_due(self) -> None:
        now = self._clock.now()
        while self._delayed and self._delayed[0][0] <= now:
            deadline, _, key = heapq.heappop(self._delayed)
            if self._delayed_at.get(key) == deadline:
                del self._delayed_at[key]
                self.add(key)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


# ====================================================================== workers


@dataclass(frozen=True)
class Result:
    """What a reconcile asks of the queue: nothing (done), a backoff requeue, or a requeue after a delay."""

    requeue: bool = False
    requeue_after: float | None = None


Handler = Callable[[K], Awaitable[Result | None]]


async def run_workers(queue: WorkQueue[K], n: int, handler: Handler[K], *, name: str = "worker") -> None:
    """Run ``n`` workers until the queue is shut down (``await queue.shutdown()`` from elsewhere)."""
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(_worker, queue, handler, name=f"{name}-{i}")


async def _worker(queue: WorkQueue[K], handler: Handler[K]) -> None:
    while (key := await queue.get()) is not None:
        try:
            result = await handler(key)
        except TransientError as exc:
            if exc.retry_after is not None:
                queue.add_after(key, exc.retry_after)
            else:
                delay = queue.add_rate_limited(key)
                log.info("transient error on %s, retry in %.3fs: %s", key, delay, exc)
        except ConflictError as exc:
            # Re-plan at once after a lost race; a conflict that keeps coming back backs off like an error.
            if queue.num_requeues(key) == 0:
                log.info("conflict on %s, re-planning at once: %s", key, exc)
                queue.mark_failure(key)
                queue.add(key)
            else:
                delay = queue.add_rate_limited(key)
                log.info("conflict again on %s, retry in %.3fs: %s", key, delay, exc)
        except TerminalError as exc:
            log.warning("terminal error on %s, not requeued: %s", key, exc)
            queue.forget(key)
        except Exception:
            # A bug in the handler: keep the key alive with backoff rather than losing it.
            log.exception("unexpected error reconciling %s", key)
            queue.add_rate_limited(key)
        else:
            if result is not None and result.requeue_after is not None:
                queue.forget(key)
                queue.add_after(key, result.requeue_after)
            elif result is not None and result.requeue:
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
        finally:
            queue.done(key)
