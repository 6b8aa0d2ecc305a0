"""StorageDomain controller: the domain's pool on every host that sees it (what each storage type needs is
in ``reconcilers.storage.backends``), and per-host readiness in status."""

from __future__ import annotations

from controller.controllers.common import on_host_readiness, own_cluster, ready_hosts, refuse_disallowed_paths
from controller.runtime.context import Runtime
from controller.runtime.registry import Controller, Handler, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond
from reconcilers.domain import HostName
from reconcilers.plan import Plan
from reconcilers.storage.actions import EnsurePool
from reconcilers.storage.backends import backend_for, pool_name
from reconcilers.storage.plan import plan_storage, storage_hosts
from specs.host import Host
from specs.storage import StorageDomain, StorageDomainStatus


def _plan(rt: Runtime, sd: StorageDomain) -> tuple[Plan, list[Host], list[HostName]]:
    hosts = storage_hosts(sd, rt.cache.all("Host", Host))
    ready = ready_hosts(rt, hosts)
    pools = {h: rt.hosts.hosts[h].pools.get(pool_name(sd.metadata.name)) for h in ready}
    return plan_storage(sd, ready, pools), hosts, ready


async def reconcile_storage(rt: Runtime, name: str) -> Result | None:
    sd = rt.cache.get("StorageDomain", name, StorageDomain)
    if sd is None:
        return None
    await refuse_disallowed_paths(rt, sd, "storage-controller")
    prev = rt.cache.status["StorageDomain"].get(name)
    unsupported = backend_for(sd).unsupported(sd)
    if unsupported is not None:
        status = StorageDomainStatus(
            observedGeneration=sd.metadata.generation,
            phase="Unavailable",
            conditions=rt.with_times((cond("Ready", False, "Unsupported", unsupported),), prev),
        )
        await rt.write_status("StorageDomain", name, status)
        return None
    plan, hosts, ready = _plan(rt, sd)
    failed: list[str] = []
    for action in plan:  # one host's failure must not keep the others from getting their pool
        result = await rt.executor.execute(Plan.of(action), rt)
        if not result.ok:
            assert isinstance(action, EnsurePool)
            failed.append(action.host)
            await rt.emit(sd, "PoolFailed", f"{action.host}: {result.error}", warning=True,
                          source="storage-controller")
    ok_hosts = tuple(sorted(h for h in ready if h not in failed))
    phase = (
        "Ready"
        if ok_hosts and not failed and len(ok_hosts) == len(hosts)
        else ("Degraded" if ok_hosts else "Unavailable")
    )
    status = StorageDomainStatus(
        observedGeneration=sd.metadata.generation,
        phase=phase,
        conditions=rt.with_times(
            (cond("Ready", bool(ok_hosts), phase, f"active on {len(ok_hosts)}/{len(hosts)} hosts"),), prev
        ),
        readyHosts=ok_hosts,
        failedHosts=tuple(sorted(set(h.metadata.name for h in hosts) - set(ok_hosts))),
    )
    await rt.write_status("StorageDomain", name, status)
    return Result(requeue=True) if failed else None


async def _ensure_pool(a: EnsurePool, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).ensure_pool(a.pool)
    rt.hosts.hosts[a.host].pools[a.pool.name] = a.pool


async def preview_storage(rt: Runtime, change: Change) -> Preview:
    sd = change.after if isinstance(change.after, StorageDomain) else None
    if sd is None or sd.metadata.deletionTimestamp is not None:
        return Preview(Plan(), note="the domain's pools and images stay on the hosts")
    unsupported = backend_for(sd).unsupported(sd)
    if unsupported is not None:
        return Preview(Plan(), note=f"Unsupported: {unsupported}")
    plan, _, ready = _plan(rt, sd)
    if not ready:
        return Preview(plan, note=f"waiting: no Ready host sees storage domain {sd.metadata.name} yet")
    return Preview(plan)


HANDLERS: dict[type, Handler] = {EnsurePool: _ensure_pool}

CONTROLLER = Controller(
    kind="StorageDomain",
    reconcile=reconcile_storage,
    scope=own_cluster,
    watches=(Watch("Host", "ready", on_host_readiness("StorageDomain")),),
    plan=preview_storage,
    handlers=HANDLERS,
)
