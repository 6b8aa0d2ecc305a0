"""Events written in batches by one task, so a reconcile does not wait for its event's etcd round trip and a
mass create writes its 10,000 ``PlanExecuted`` events in a few dozen transactions instead of 10,000.

``EventSink.put`` only queues (False when the sink is not running: the caller writes the event itself).
``run`` writes what is queued after ``linger`` seconds, at most ``max_batch`` per transaction, and flushes
what is left when cancelled. An event that cannot be stored is logged and dropped — as a single event
always was: an event must never break a reconcile.
"""

from __future__ import annotations

import logging

import anyio

from controller.store import Store, StoreError
from specs.event import Event

log = logging.getLogger("virtplane.events")


class EventSink:
    def __init__(self, store: Store, *, max_batch: int = 256, linger: float = 0.02) -> None:
        self.store = store
        self.max_batch = max_batch
        self.linger = linger
        self.running = False
        self.batches = 0  # transactions written (for observers: tests, metrics)
        self._pending: list[Event] = []
        self._wake = anyio.Event()

    def put(self, event: Event) -> bool:
        if not self.running:
            return False
        self._pending.append(event)
        self._wake.set()
        return True

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await anyio.sleep(self.linger)
                await self.flush()
        finally:
            self.running = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.flush()

    async def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                await self.store.emit_events(batch)
                self.batches += 1
            except StoreError as e:
                log.warning("could not store %d event(s) (%s ...): %s", len(batch), batch[0].reason, e)
