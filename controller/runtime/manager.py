"""The manager: informer cache -> work queue -> the registered controllers, plus host events and resync.

Event sources only enqueue keys: the store watch (specs and statuses, mapped to keys by each controller's
``watches``), our own status writes (same mapping), libvirt lifecycle events per host (each controller's
``on_domain_event``), timers (``Result.requeue_after``) and a periodic resync of every key. One worker
pool serves every kind; the queue guarantees a key is never processed by two workers at once. A key is
reconciled only by the replica that leads its scope (``Controller.scope``: the owning cluster, or the
global scope). Nothing here knows a kind by name: everything comes from the ``Registry``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from controller.adapters.libvirt.observe import DomainEvent
from controller.adapters.secrets import DEFAULT_SECRETS_DIR
from controller.common.errors import TransientError
from controller.common.metrics import LabelValues, sample
from controller.common.metrics import Registry as MetricsRegistry
from controller.runtime.cache import Cache
from controller.runtime.context import Key, Runtime
from controller.runtime.events import EventSink
from controller.runtime.executor import Executor
from controller.runtime.hosts import HostRegistry
from controller.runtime.leader import Elector
from controller.runtime.registry import GLOBAL, Part, Registry
from controller.runtime.workqueue import Result, WorkQueue, run_workers
from controller.store import Change, ConflictError, NotFoundError, Store, StoreUnavailable
from specs.confinement import HostPathPolicy
from specs.kinds import KINDS

log = logging.getLogger("virtplane.manager")

PlanWire = dict[tuple[str, str], dict[str, Any]]  # (kind, name) -> Preview.to_wire()


@dataclass(frozen=True)
class ManagerOptions:
    data_dir: Path
    workers: int = 32
    resync_seconds: float = 300.0
    host_capacity: int = 4
    identity: str = "virtplane"
    lease_ttl: int = 10
    secrets_dir: Path = DEFAULT_SECRETS_DIR  # where spec fields that name a secret find its file
    lab_dir: Path | None = None  # `virtplane lab` hosts the lab power agent may switch
    policy: HostPathPolicy = field(default_factory=HostPathPolicy)  # host paths specs may name
    glusterd_socket: Path | None = None  # where GlusterVolumes are created and changed
    import_dirs: tuple[str, ...] = ()  # `--import-dir`: where Disk imports may read images (beside storage)


class Manager:
    def __init__(
        self, store: Store, registry: Registry, options: ManagerOptions, metrics: MetricsRegistry | None = None
    ) -> None:
        self.options = options
        self.registry = registry
        self.cache = Cache(store, tuple(KINDS))
        self.queue: WorkQueue[Key] = WorkQueue()
        self.hosts = HostRegistry(options.data_dir / "sim", capacity=options.host_capacity)
        self.elector = Elector(store, options.identity, ttl=options.lease_ttl)
        self.rt = Runtime(store, self.cache, self.hosts, self.queue, metrics or MetricsRegistry(),
                          executor=Executor(registry.handlers), identity=options.identity,
                           secrets_dir=options.secrets_dir, lab_dir=options.lab_dir, policy=options.policy,
                           glusterd_socket=options.glusterd_socket,
                           import_dirs=options.import_dirs, upload_dir=options.data_dir / "uploads")
        self.rt.notify = self._dispatch
        self.events = EventSink(store)
        self.rt.events = self.events
        self.rt.on_domain_event = self._on_domain_event
        self.rt.metrics.add_collector(self._metrics)
        self.reconciles: Counter[str] = Counter()  # reconciles run by this replica, by kind
        self._inflight: Counter[str | None] = Counter()  # reconciles running, by scope
        self.elector.busy = lambda scope: self._inflight[scope] > 0
        self.resyncs_skipped = 0  # objects the periodic resync found in sync and did not queue

    # -- leadership -------------------------------------------------------------------------------

    def scope_of(self, kind: str, name: str) -> str | None:
        """The scope whose leader reconciles this object; None when it is not in the cache (gone)."""
        obj = self.cache.specs.get(kind, {}).get(name)
        controller = self.registry.get(kind)
        if obj is None or controller is None:
            return None
        return controller.scope(self.cache, obj)

    def leads(self, kind: str, name: str) -> bool:
        scope = self.scope_of(kind, name)
        return scope is None or self.elector.leads(scope)

    def _want_scopes(self, scopes: Iterable[str | None]) -> None:
        wanted = {s for s in scopes if s is not None} | {GLOBAL}
        if not wanted <= self.elector.wanted:
            self.elector.want(self.elector.wanted | wanted)

    # -- event sources ----------------------------------------------------------------------------

    def _on_change(self, kind: str, name: str, part: Part, before: Any, after: Any) -> None:
        if part == "spec" and kind in self.registry:
            self.queue.add((kind, name))
            self._want_scopes([self.scope_of(kind, name)])
        self._dispatch(kind, name, part, before, after)

    def _dispatch(self, kind: str, name: str, part: Part, before: Any, after: Any) -> None:
        """Wake the controllers that watch ``part`` of ``kind``."""
        for watching, watch in self.registry.watchers(kind, part):
            for target in watch.map(self.rt, name, before, after):
                self.queue.add((watching, target))

    def _on_domain_event(self, event: DomainEvent) -> None:
        for controller in self.registry:
            if controller.on_domain_event is None:
                continue
            for name in controller.on_domain_event(self.rt, event):
                key = (controller.kind, name)
                # A key backing off after errors waits for its backoff: an event (often caused by our own
                # define/start) must not turn a failing reconcile into a hot loop.
                if self.queue.num_requeues(key) == 0:
                    self.queue.add(key)

    # -- work -------------------------------------------------------------------------------------

    async def _handle(self, key: Key) -> Result | None:
        kind, name = key
        controller = self.registry.get(kind)
        scope = self.scope_of(kind, name)
        if controller is None or (scope is not None and not self.elector.leads(scope)):
            return None  # another replica leads this object's scope
        self.reconciles[kind] += 1
        self._inflight[scope] += 1  # the elector hands a scope over only between reconciles
        try:
            return await controller.reconcile(self.rt, name)
        except ConflictError:
            return Result(requeue=True)
        except NotFoundError:
            return None
        except StoreUnavailable as e:
            raise TransientError(str(e), retry_after=1.0) from e
        finally:
            self._inflight[scope] -= 1

    async def _resync(self) -> None:
        while True:
            await anyio.sleep(self.options.resync_seconds)
            self.resync_all(changed_only=True)

    def _on_gain(self, scope: str) -> None:
        self.resync_all()  # everything, not only what looks out of sync: another replica acted meanwhile

    def _on_resume(self, scope: str) -> None:
        self.resync_all(changed_only=True)  # our lease held throughout: only the keys skipped meanwhile

    def resync_all(self, *, changed_only: bool = False) -> int:
        """Queue every object (at start, on gaining a scope), or with ``changed_only`` only those whose
        controller cannot tell from the caches that they are in sync (the periodic resync). Returns how
        many were queued."""
        queued = 0
        for kind in self.registry.kinds:
            in_sync = self.registry.controllers[kind].in_sync if changed_only else None
            for name in list(self.cache.specs[kind]):
                if in_sync is not None and in_sync(self.rt, name):
                    self.resyncs_skipped += 1
                    continue
                self.queue.add((kind, name))
                queued += 1
        return queued

    # -- diff -------------------------------------------------------------------------------------

    async def plan_changes(self, changes: list[Change]) -> PlanWire:
        """The plan each registered controller would execute for each change (``diff``, a dry-run apply)."""
        plans: PlanWire = {}
        for change in changes:
            controller = self.registry.get(change.kind)
            if controller is None or controller.plan is None:
                continue
            preview = await controller.plan(self.rt, change)
            plans[(change.kind, change.name)] = preview.to_wire()
        return plans

    # -- metrics ----------------------------------------------------------------------------------

    def _metrics(self) -> list[str]:
        """Controller state for /metrics, read at scrape time."""
        q = self.queue.metrics()
        calls: dict[LabelValues, float] = {}
        for host, runtime in self.hosts.hosts.items():
            for op, n in runtime.conn.calls.items():
                calls[(("host", host), ("op", op))] = n
        counters: dict[LabelValues, float] = {(("what", k),): float(v) for k, v in self.rt.counters.items()}
        reconciles: dict[LabelValues, float] = {(("kind", k),): float(self.reconciles[k]) for k in self.registry.kinds}
        leaders: dict[LabelValues, float] = {
            (("cluster", c),): 1.0 if self.elector.leads(c) else 0.0 for c in sorted(self.elector.wanted)
        }
        return [
            *sample("virtplane_libvirt_calls_total", "counter", "libvirt API calls by host and call.", calls),
            *sample("virtplane_workqueue_depth", "gauge", "Keys waiting in the work queue.", {(): q.depth}),
            *sample("virtplane_workqueue_adds_total", "counter", "Keys added to the work queue.", {(): q.adds}),
            *sample("virtplane_workqueue_retries_total", "counter", "Rate-limited requeues.", {(): q.retries}),
            *sample("virtplane_controller_total", "counter",
                    "Controller outcomes: status_writes, events, actions, inconsistent.", counters),
            *sample("virtplane_reconciles_total", "counter", "Reconciles this replica ran, by kind.", reconciles),
            *sample("virtplane_leader", "gauge", "1 when this replica leads the cluster.", leaders),
            *sample("virtplane_hosts_ready", "gauge", "Hosts this replica is connected to and Ready.",
                    {(): float(sum(1 for r in self.hosts.hosts.values() if r.ready))}),
        ]

    # -- main loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.cache.load()
        for controller in self.registry:
            if controller.start is not None:
                controller.start(self.rt)
        self._want_scopes(self.scope_of(kind, name) for kind in self.registry.kinds for name in self.cache.specs[kind])
        self.elector.on_gain = self._on_gain
        self.elector.on_resume = self._on_resume
        self.resync_all()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.elector.run)
                tg.start_soon(self.events.run)
                tg.start_soon(self.cache.watch, self._on_change)
                tg.start_soon(self._resync)
                tg.start_soon(run_workers, self.queue, self.options.workers, self._handle)
        finally:
            with anyio.CancelScope(shield=True):
                await self.queue.shutdown(drain=False)
                await self.elector.resign()  # a stopped replica hands over at once, not after the lease TTL
                await self.hosts.close()
