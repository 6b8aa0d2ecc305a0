"""What every reconcile shares: the store, the informer cache, host connections, the queue, the executor,
events, and the in-memory state some controllers keep (each field says who owns it).

Status writes go through ``write_status``: skipped when nothing a user would see changed (so a resync of
an unchanged world writes nothing), compare-and-swap against the revision the cache last saw, and the
condition transition times are kept when a condition did not change. A write that happened is reported
to ``notify`` (the manager wakes the controllers that watch that status).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from controller.adapters.libvirt.migration import Migrations
from controller.adapters.libvirt.observe import DomainEvent
from controller.adapters.secrets import DEFAULT_SECRETS_DIR
from controller.common.metrics import Registry as MetricsRegistry
from controller.runtime.allocations import Allocations
from controller.runtime.cache import Cache
from controller.runtime.events import EventSink
from controller.runtime.executor import Executor
from controller.runtime.ha import HaRestarts, PolicyClock, PowerRequests
from controller.runtime.hosts import HostRegistry
from controller.runtime.pending import PendingRequests
from controller.runtime.registry import Part
from controller.runtime.workqueue import WorkQueue
from controller.store import ConflictError, NotFoundError, Store, StoreError
from specs.confinement import HostPathPolicy
from specs.event import Event, InvolvedObject
from specs.meta import Condition, Resource, StatusBase

log = logging.getLogger("virtplane.controller")

Key = tuple[str, str]
R = TypeVar("R", bound=Resource)
ChangeHook = Callable[[str, str, Part, Any, Any], None]  # (kind, name, part, before, after)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Runtime:
    store: Store
    cache: Cache
    hosts: HostRegistry
    queue: WorkQueue[Key]
    metrics: MetricsRegistry
    executor: Executor = field(default_factory=lambda: Executor({}))
    clock: Callable[[], datetime] = utcnow
    counters: Counter[str] = field(default_factory=Counter)  # status_writes, events, actions, inconsistent
    identity: str = "virtplane"
    secrets_dir: Path = DEFAULT_SECRETS_DIR  # `virtplane server --secrets-dir`: files named by spec secret fields
    # Changes this replica makes or sees outside the store watch: its own status writes, a host's readiness.
    notify: ChangeHook = lambda kind, name, part, before, after: None
    # libvirt lifecycle events of every host go here (the manager maps them to keys).
    on_domain_event: Callable[[DomainEvent], None] = lambda event: None
    # In-memory state, lost on restart (docs/ARCHITECTURE.md says what that costs):
    # placements per host, written by the VirtualMachine controller, read by every scheduling decision;
    allocations: Allocations = field(default_factory=Allocations)
    # live requests the guest must acknowledge, owned by the VirtualMachine controller;
    pending: PendingRequests = field(default_factory=PendingRequests)
    # migrations in flight and their outcomes: started and collected by the VirtualMachine controller,
    # reported by the Migration controller.
    migrations: Migrations = field(default_factory=Migrations)
    # where the HA restart after fencing placed each displaced VM (Host controller -> VM controller);
    ha: HaRestarts = field(default_factory=HaRestarts)
    # power-saving decisions per host (Cluster controller -> Host controller).
    power: PowerRequests = field(default_factory=PowerRequests)
    # when the balancer / power saving last ran per cluster, and since when each host is empty.
    policy_clock: PolicyClock = field(default_factory=PolicyClock)
    # where `virtplane lab` hosts live, for the lab power agent (`virtplane server --lab-dir`).
    lab_dir: Path | None = None
    # Host paths specs may name (`virtplane server --allowed-*-dir`, --lab-dir, --host-keys-dir); the API
    # refuses others at apply, and the controllers again before acting (objects stored before the policy).
    policy: HostPathPolicy = field(default_factory=HostPathPolicy)
    # `virtplane server --glusterd-socket`: the CLI socket of a glusterd of the trusted pool (GlusterVolumes)
    glusterd_socket: Path | None = None
    # events are written in batches by this sink's task while the manager runs (directly otherwise).
    events: EventSink | None = None
    # `virtplane server --import-dir`: directories Disk imports may read images from (storage domains too).
    import_dirs: tuple[str, ...] = ()
    # Where the API puts images uploaded for Disks (`virtplane disk upload`): the server's data dir/uploads.
    upload_dir: Path | None = None

    async def ensure_finalizer(self, obj: R, finalizer: str) -> R:
        """``obj`` with ``finalizer`` added in the store (unless it is there or the object is being deleted)."""
        if obj.metadata.deletionTimestamp is not None or finalizer in obj.metadata.finalizers:
            return obj
        updated = await self.store.add_finalizer(obj.kind, obj.metadata.name, finalizer)
        if not isinstance(updated, type(obj)):
            raise TypeError(f"{obj.kind}/{obj.metadata.name} came back as {type(updated).__name__}")
        return updated

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

    def status_equal(self, kind: str, name: str, status: StatusBase) -> bool:
        """Whether ``status`` says what the cached one says (times aside)."""
        previous = self.cache.status[kind].get(name)
        return previous is not None and _comparable(previous) == _comparable(status)

    async def write_status(self, kind: str, name: str, status: StatusBase, *, force: bool = False) -> bool:
        """Write ``status`` unless equal to the cached one (``force``: write anyway, e.g. a heartbeat).
        Returns True if written."""
        previous = self.cache.status[kind].get(name)
        if not force and self.status_equal(kind, name, status):
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
        self.notify(kind, name, "status", previous, status)
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
            user=obj.metadata.updatedBy,
            source=source,
        )
        self.counters["events"] += 1
        if self.events is None or not self.events.put(event):  # else written with others by the sink's task
            await self._store_event(event)
        log.info(
            "%s %s/%s: %s [correlation %s, user %s]", reason, obj.kind, obj.metadata.name, message,
            obj.metadata.correlationId, obj.metadata.updatedBy or "-",
        )

    async def _store_event(self, event: Event) -> None:
        try:
            await self.store.emit_event(event)
        except StoreError as e:  # an event must never break a reconcile
            o = event.involvedObject
            log.warning("could not store event %s for %s/%s: %s", event.reason, o.kind, o.name, e)


def _comparable(status: StatusBase) -> dict[str, Any]:
    """Status without times, for deciding whether a write is needed."""
    body = status.model_dump(mode="json", exclude={"lastHeartbeat"})
    for c in body.get("conditions") or ():
        c.pop("lastTransitionTime", None)
    return body
