"""StorageDomain controller: the domain's pool on every host that sees it (what each storage type needs is
in ``reconcilers.storage.backends``), and per-host reachability, capacity and free space in status.

- Pool backends (dir, netfs): each reconcile observes the pool on every Ready host (capacity refreshed),
  ensures (defines, builds, starts = mounts) it where missing or inactive, and records per host whether it
  is active and, if not, libvirt's reason (a failed mount says why).
- libnfs backend (nfs with access qemu): no pool; the server mounts the export with libnfs itself and reads
  its size. Hosts reach it with QEMU's libnfs, which cannot be probed without an agent on the host, so every
  Ready host counts as reaching it when the server does (the status message says so).

A host that does not reach the domain gets no VM using it (``reconcilers.scheduler``, ``Reject.NO_STORAGE``,
with this status's per-host message). Reconciled again every ``REFRESH`` seconds (free space, lost mounts).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.adapters import nfs
from controller.common.errors import ReconcileError
from controller.controllers.common import on_host_readiness, own_cluster, ready_hosts, refuse_disallowed_paths
from controller.runtime.context import Runtime
from controller.runtime.registry import Controller, Handler, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond
from reconcilers.domain import HostName, NetfsPoolConfig, ObservedPool
from reconcilers.plan import Plan
from reconcilers.storage.actions import EnsurePool
from reconcilers.storage.backends import backend_for, pool_name
from reconcilers.storage.plan import plan_storage, storage_hosts
from specs.host import Host
from specs.storage import StorageDomain, StorageDomainStatus, StorageHostState

REFRESH = 60.0


async def _observe_pools(rt: Runtime, sd: StorageDomain, ready: list[HostName]
                         ) -> tuple[dict[HostName, ObservedPool | None], dict[HostName, str]]:
    pools: dict[HostName, ObservedPool | None] = {}
    errors: dict[HostName, str] = {}
    for h in ready:
        try:
            pools[h] = await rt.hosts.connection(h).observe_pool(pool_name(sd.metadata.name))
        except ReconcileError as err:
            errors[h] = str(err)
    return pools, errors


async def reconcile_storage(rt: Runtime, name: str) -> Result | None:
    sd = rt.cache.get("StorageDomain", name, StorageDomain)
    if sd is None:
        return None
    await refuse_disallowed_paths(rt, sd, "storage-controller")
    prev = rt.cache.status["StorageDomain"].get(name)
    backend = backend_for(sd)
    unsupported = backend.unsupported(sd)
    if unsupported is not None:
        status = StorageDomainStatus(
            observedGeneration=sd.metadata.generation,
            phase="Unavailable",
            conditions=rt.with_times((cond("Ready", False, "Unsupported", unsupported),), prev),
        )
        await rt.write_status("StorageDomain", name, status)
        return None
    hosts = storage_hosts(sd, rt.cache.all("Host", Host))
    ready = ready_hosts(rt, hosts)
    states: dict[str, StorageHostState] = {
        h.metadata.name: StorageHostState(host=h.metadata.name, reachable=False, reason="HostNotReady",
                                          message="the host is not connected or not Ready")
        for h in hosts
    }
    capacity: int | None = None
    available: int | None = None
    export = backend.nfs(sd)
    if export is not None:
        try:
            space = await nfs.probe(export)
            capacity, available = space.capacity_bytes, space.available_bytes
            for h in ready:
                states[h] = StorageHostState(
                    host=h, reachable=True, reason="ServerReachable",
                    message=f"{export.url('')} answers the server; the host reaches it with QEMU's libnfs")
        except ReconcileError as err:
            for h in ready:
                states[h] = StorageHostState(host=h, reachable=False, reason="ServerUnreachable", message=str(err))
    else:
        pools, errors = await _observe_pools(rt, sd, ready)
        for action in plan_storage(sd, [h for h in ready if h not in errors], pools):
            # one host's failure must not keep the others from getting their pool
            result = await rt.executor.execute(Plan.of(action), rt)
            assert isinstance(action, EnsurePool)
            if not result.ok:
                errors[action.host] = str(result.error)
        pools, more = await _observe_pools(rt, sd, [h for h in ready if h not in errors])
        errors |= more
        mounted = "mounted" if isinstance(backend.pool(sd), NetfsPoolConfig) else "active"
        for h in ready:
            seen = pools.get(h)
            if h in errors:
                reason = "MountFailed" if mounted == "mounted" else "PoolFailed"
                states[h] = StorageHostState(host=h, reachable=False, reason=reason, message=errors[h])
            elif seen is not None and seen.active:
                states[h] = StorageHostState(host=h, reachable=True, reason="Active",
                                             message=f"pool {seen.config.name} {mounted} at {seen.config.path}")
                if capacity is None:
                    capacity, available = seen.capacity_bytes, seen.available_bytes
    await _emit_changes(rt, sd, prev, states.values())
    ok_hosts = tuple(sorted(h for h, s in states.items() if s.reachable))
    phase = "Ready" if hosts and len(ok_hosts) == len(hosts) else ("Degraded" if ok_hosts else "Unavailable")
    failed = [s for s in states.values() if not s.reachable]
    message = f"reachable from {len(ok_hosts)}/{len(hosts)} hosts" + (
        "; " + "; ".join(f"{s.host}: {s.message}" for s in failed[:3]) if failed else "")
    status = StorageDomainStatus(
        observedGeneration=sd.metadata.generation,
        phase=phase,
        conditions=rt.with_times((cond("Ready", bool(ok_hosts), phase, message),), prev),
        capacity=capacity,
        available=available,
        readyHosts=ok_hosts,
        failedHosts=tuple(sorted(s.host for s in failed)),
        hosts=tuple(states[h] for h in sorted(states)),
    )
    await rt.write_status("StorageDomain", name, status)
    if any(s.reason != "HostNotReady" for s in failed):
        return Result(requeue=True)  # backoff: a mount or server may come back
    return Result(requeue_after=REFRESH)


async def _emit_changes(rt: Runtime, sd: StorageDomain, prev: Any, states: Iterable[StorageHostState]) -> None:
    """An event when a host starts or stops reaching the domain (not on every retry)."""
    before = {s.host: s for s in prev.hosts} if isinstance(prev, StorageDomainStatus) else {}
    for state in states:
        old = before.get(state.host)
        if old is not None and (old.reachable, old.reason) == (state.reachable, state.reason):
            continue
        if state.reachable:
            await rt.emit(sd, "StorageReachable", f"{state.host}: {state.message}", source="storage-controller")
        elif state.reason != "HostNotReady":
            await rt.emit(sd, state.reason, f"{state.host}: {state.message}", warning=True,
                          source="storage-controller")


async def _ensure_pool(a: EnsurePool, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).ensure_pool(a.pool)
    rt.hosts.hosts[a.host].pools[a.pool.name] = a.pool


async def preview_storage(rt: Runtime, change: Change) -> Preview:
    sd = change.after if isinstance(change.after, StorageDomain) else None
    if sd is None or sd.metadata.deletionTimestamp is not None:
        return Preview(Plan(), note="the domain's pools and images stay on the hosts")
    backend = backend_for(sd)
    unsupported = backend.unsupported(sd)
    if unsupported is not None:
        return Preview(Plan(), note=f"Unsupported: {unsupported}")
    if backend.nfs(sd) is not None:
        return Preview(Plan(), note="no pool: the server creates images over NFS (libnfs); hosts use QEMU's libnfs")
    ready = ready_hosts(rt, storage_hosts(sd, rt.cache.all("Host", Host)))
    if not ready:
        return Preview(Plan(), note=f"waiting: no Ready host sees storage domain {sd.metadata.name} yet")
    pools, _ = await _observe_pools(rt, sd, ready)
    return Preview(plan_storage(sd, ready, pools))


HANDLERS: dict[type, Handler] = {EnsurePool: _ensure_pool}

CONTROLLER = Controller(
    kind="StorageDomain",
    reconcile=reconcile_storage,
    scope=own_cluster,
    watches=(Watch("Host", "ready", on_host_readiness("StorageDomain")),),
    plan=preview_storage,
    handlers=HANDLERS,
)
