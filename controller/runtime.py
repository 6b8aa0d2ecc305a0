"""What every reconciler shares: the store, the informer cache, host connections, the queue, events.

Status writes go through ``write_status``: skipped when nothing a user would see changed (so a resync of
an unchanged world writes nothing), compare-and-swap against the revision the cache last saw, and the
condition transition times are kept when a condition did not change.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.allocations import Allocations
from controller.cache import Cache
from controller.hosts import HostRegistry
from controller.metrics import Registry
from controller.store import ConflictError, NotFoundError, Store
from controller.workqueue import WorkQueue
from specs.event import Event, InvolvedObject
from specs.meta import Condition, Resource, StatusBase

log = logging.getLogger("virtplane.controller")

Key = tuple[str, str]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    store: Store
    cache: Cache
    hosts: HostRegistry
    queue: WorkQueue[Key]
    metrics: Registry
    clock: Callable[[], datetime] = utcnow
    counters: Counter[str] = field(default_factory=Counter)  # status_writes, events, ...
    identity: str = "virtplane"
    allocations: Allocations = field(default_factory=Allocations)
    # Live requests the guest must acknowledge (unplug, balloon), per VM: key -> monotonic request time.
    pending: dict[str, dict[str, float]] = field(default_factory=dict)

    def with_times(self, conditions: tuple[Condition, ...], previous: StatusBase | None) -> tuple[Condition, ...]:
        """Stamp lastTransitionTime: kept from the previous condition when its status did not change."""
        before = {c.type: c for c in (previous.conditions if previous else ())}
        now = self.clock()
        stamped = []
        for c in conditions:
            old = before.get(c.type)
            when = old.lastTransitionTime if old is not None and old.status == c.status else now
            stamped.append(c.model_copy(update={"lastTransitionTime": when}))
        return tuple(stamped)

    async def write_status(self, kind: str, name: str, status: StatusBase) -> bool:
        """Write ``status`` unless equal to the cached one. Returns True if written."""
        previous = self.cache.status[kind].get(name)
        if previous is not None and _comparable(previous) == _comparable(status):
            return False
        expected = self.cache.status_rev.get((kind, name), 0)
        try:
            revision = await self.store.put_status(kind, name, status, expected)
        except ConflictError:
            # Someone (an older leader, or a racing watch) wrote it: refresh and try once more.
            fresh, rev = await self.store.get_status(kind, name)
            if fresh is not None:
                self.cache.note_status(kind, name, fresh, rev)
            revision = await self.store.put_status(kind, name, status, rev)
        except NotFoundError:
            return False
        self.cache.note_status(kind, name, status, revision)
        self.counters["status_writes"] += 1
        return True

    async def emit(
        self, obj: Resource, reason: str, message: str, *, warning: bool = False, source: str = "controller"
    ) -> None:
        event = Event(
            type="Warning" if warning else "Normal",
            reason=reason,
            message=message,
            involvedObject=InvolvedObject(kind=obj.kind, name=obj.metadata.name, uid=obj.metadata.uid),
            correlationId=obj.metadata.correlationId,
            source=source,
        )
        self.counters["events"] += 1
        try:
            await self.store.emit_event(event)
        except Exception as e:  # an event must never break a reconcile
            log.warning("could not store event %s for %s/%s: %s", reason, obj.kind, obj.metadata.name, e)
        log.info(
            "%s %s/%s: %s [correlation %s]", reason, obj.kind, obj.metadata.name, message, obj.metadata.correlationId
        )


def _comparable(status: StatusBase) -> dict[str, Any]:
    """Status without times, for deciding whether a write is needed."""
    body = status.model_dump(mode="json", exclude={"lastHeartbeat"})
    for c in body.get("conditions") or ():
        c.pop("lastTransitionTime", None)
    return body
