"""Wires the controllers: informer cache -> work queue -> reconcilers, plus host events and resync.

Event sources only enqueue keys: the store watch (specs and statuses), libvirt lifecycle events per
host, and a periodic resync of every key. One worker pool serves every kind; the queue guarantees a
key is never processed by two workers at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from controller.api import ApiContext
from controller.cache import Cache
from controller.hosts import HostRegistry
from controller.leader import Elector
from controller.libvirt.errors import ReconcileError, TransientError
from controller.libvirt.observe import DomainEvent
from controller.metrics import LabelValues, Registry, sample
from controller.reconcile_infra import (
    DISK_FINALIZER,
    reconcile_cluster,
    reconcile_disk,
    reconcile_host,
    reconcile_network,
    reconcile_pool,
    reconcile_storage,
)
from controller.reconcile_migration import reconcile_migration
from controller.reconcile_snapshot import reconcile_snapshot
from controller.reconcile_vm import FINALIZER as VM_FINALIZER
from controller.reconcile_vm import reconcile_vm, record_placement, vm_inputs
from controller.runtime import Key, Runtime
from controller.store import ConflictError, NotFoundError, Store, StoreUnavailable
from controller.workqueue import Result, WorkQueue, run_workers
from reconcilers.domain import HostName
from reconcilers.pool import POOL_LABEL
from reconcilers.vm import plan_vm
from specs.disk import Disk
from specs.vm import VirtualMachine, VirtualMachineStatus

log = logging.getLogger("virtplane.manager")

Reconcile = Callable[[Runtime, str], Awaitable[Result | None]]
RECONCILERS: dict[str, Reconcile] = {
    "Cluster": reconcile_cluster,
    "Host": reconcile_host,
    "StorageDomain": reconcile_storage,
    "Network": reconcile_network,
    "Disk": reconcile_disk,
    "VirtualMachine": reconcile_vm,
    "VirtualMachinePool": reconcile_pool,
    "Snapshot": reconcile_snapshot,
    "Migration": reconcile_migration,
}


@dataclass(frozen=True)
class ManagerOptions:
    data_dir: Path
    workers: int = 32
    resync_seconds: float = 300.0
    host_capacity: int = 4
    identity: str = "virtplane"
    lease_ttl: int = 10


class Manager:
    def __init__(self, store: Store, options: ManagerOptions) -> None:
        self.options = options
        self.cache = Cache(store)
        self.queue: WorkQueue[Key] = WorkQueue()
        self.hosts = HostRegistry(options.data_dir / "sim", capacity=options.host_capacity)
        self.elector = Elector(store, options.identity, ttl=options.lease_ttl)
        self.rt: Runtime | None = None

    def _cluster_of(self, kind: str, name: str) -> str | None:
        obj = self.cache.specs.get(kind, {}).get(name)
        if obj is None:
            return None
        if kind == "Cluster":
            return name
        cluster = getattr(obj.spec, "cluster", None)
        if cluster is None and isinstance(obj, Disk) and obj.spec.storageDomain:
            sd = self.cache.specs["StorageDomain"].get(obj.spec.storageDomain)
            cluster = getattr(sd.spec, "cluster", None) if sd else None
        return cluster

    def _leads(self, kind: str, name: str) -> bool:
        cluster = self._cluster_of(kind, name)
        return cluster is None or self.elector.leads(cluster)

    def _on_change(self, kind: str, name: str, part: str) -> None:
        if kind not in RECONCILERS:
            return
        if part == "spec":
            self.queue.add((kind, name))
            cluster = self._cluster_of(kind, name)
            if cluster is not None and cluster not in self.elector.wanted:
                self.elector.want({cluster, *self.elector.wanted})
            if kind == "Host" and self.rt is not None:  # maintenance, labels: its VMs may have to move
                for vm_name, usage in list(self.rt.allocations.by_vm.items()):
                    if usage.host == name:
                        self.queue.add(("VirtualMachine", vm_name))
            return
        # Status changes of dependencies wake their dependents.
        if kind == "VirtualMachine":
            vm = self.cache.get("VirtualMachine", name, VirtualMachine)
            pool = vm.metadata.labels.get(POOL_LABEL) if vm is not None else None
            if pool:
                self.queue.add(("VirtualMachinePool", pool))
        if kind == "Disk":
            for vm in self.cache.all("VirtualMachine", VirtualMachine):
                if any(a.disk == name for a in vm.spec.disks):
                    self.queue.add(("VirtualMachine", vm.metadata.name))

    def _on_domain_event(self, event: DomainEvent) -> None:
        runtime = self.hosts.hosts.get(event.host)
        if runtime is not None:
            runtime.domains.pop(event.domain, None) if event.event == "undefined" else None
        key = ("VirtualMachine", event.domain)
        # A key backing off after errors waits for its backoff: an event (often caused by our own
        # define/start) must not turn a failing reconcile into a hot loop.
        if event.domain in self.cache.specs["VirtualMachine"] and self.queue.num_requeues(key) == 0:
            self.queue.add(key)

    async def _handle(self, key: Key) -> Result | None:
        kind, name = key
        assert self.rt is not None
        if not self._leads(kind, name):
            return None  # another replica reconciles this cluster
        try:
            result = await RECONCILERS[kind](self.rt, name)
        except ConflictError:
            return Result(requeue=True)
        except NotFoundError:
            return None
        except StoreUnavailable as e:
            raise TransientError(str(e), retry_after=1.0) from e
        if kind == "Host":
            runtime = self.hosts.hosts.get(HostName(name))
            if runtime is not None and runtime.ready and not runtime.events_subscribed:
                runtime.events_subscribed = True
                try:
                    await runtime.conn.watch_events(self._on_domain_event)
                except ReconcileError as e:
                    runtime.events_subscribed = False
                    log.warning("host %s: no lifecycle events: %s", name, e)
        return result

    async def _resync(self) -> None:
        while True:
            await anyio.sleep(self.options.resync_seconds)
            self.resync_all()

    def resync_all(self) -> None:
        for kind in RECONCILERS:
            for name in list(self.cache.specs[kind]):
                self.queue.add((kind, name))

    def _metrics(self) -> list[str]:
        """Controller state for /metrics, read at scrape time."""
        assert self.rt is not None
        q = self.queue.metrics()
        calls: dict[LabelValues, float] = {}
        for host, runtime in self.hosts.hosts.items():
            for op, n in runtime.conn.calls.items():
                calls[(("host", host), ("op", op))] = n
        counters: dict[LabelValues, float] = {(("what", k),): float(v) for k, v in self.rt.counters.items()}
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
            *sample("virtplane_leader", "gauge", "1 when this replica leads the cluster.", leaders),
            *sample("virtplane_hosts_ready", "gauge", "Hosts this replica is connected to and Ready.",
                    {(): float(sum(1 for r in self.hosts.hosts.values() if r.ready))}),
        ]

    async def plan_changes(self, changes: list[Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """The plan the controller would execute for each changed VirtualMachine (for `diff`)."""
        assert self.rt is not None
        plans: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for change in changes:
            if change.kind != "VirtualMachine":
                continue
            # The dry run's `after` is what would be stored: uid kept, generation moved on. Planning
            # with it shows every action the controller would run, the owner re-stamp included.
            vm = change.after if isinstance(change.after, VirtualMachine) else None
            if vm is None and change.action == "deleted":
                current = self.cache.get("VirtualMachine", change.name, VirtualMachine)
                if current is not None:
                    vm = current.model_copy(update={"metadata": current.metadata.model_copy(
                        update={"deletionTimestamp": self.rt.clock()})})
            decision = plan_vm(vm_inputs(self.rt, change.name, vm))
            plans[(change.kind, change.name)] = decision.plan.to_wire()
        return plans

    async def run(self, ctx: ApiContext | None = None) -> None:
        await self.cache.load()
        self.rt = Runtime(self.cache.store, self.cache, self.hosts, self.queue,
                          ctx.metrics if ctx is not None else Registry(),
                          identity=self.options.identity)
        self.rt.metrics.add_collector(self._metrics)
        if ctx is not None:
            ctx.plan_hook = self.plan_changes
            ctx.default_finalizers.update({"VirtualMachine": (VM_FINALIZER,), "Disk": (DISK_FINALIZER,)})
        for vm in self.cache.all("VirtualMachine", VirtualMachine):
            status = self.cache.status["VirtualMachine"].get(vm.metadata.name)
            if isinstance(status, VirtualMachineStatus) and status.host:
                record_placement(self.rt, vm, status.host)
        self.elector.want({c for kind in RECONCILERS for name in self.cache.specs[kind]
                           if (c := self._cluster_of(kind, name)) is not None})
        self.elector.on_gain = lambda cluster: self.resync_all()
        self.resync_all()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.elector.run)
                tg.start_soon(self.cache.watch, self._on_change)
                tg.start_soon(self._resync)
                tg.start_soon(run_workers, self.queue, self.options.workers, self._handle)
        finally:
            with anyio.CancelScope(shield=True):
                await self.queue.shutdown(drain=False)
                await self.elector.resign()  # a stopped replica hands over at once, not after the lease TTL
                await self.hosts.close()


def controller_tasks(options: ManagerOptions) -> tuple[Callable[[Store, ApiContext], Coroutine[Any, Any, None]], ...]:
    async def run(store: Store, ctx: ApiContext) -> None:
        await Manager(store, options).run(ctx)

    return (run,)
