"""VirtualMachinePool controller: replica VMs and their boot disks (clones of the base disk), kept at
``spec.replicas``; readiness counted from the replicas' status."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.controllers.common import own_cluster
from controller.runtime.context import Runtime
from controller.runtime.registry import Controller, Handler, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond
from reconcilers.plan import Plan
from reconcilers.pool.actions import ApplyObjects, DeleteObjects
from reconcilers.pool.plan import POOL_LABEL, plan_pool, replica_names
from specs.disk import Disk
from specs.meta import Resource
from specs.pool import VirtualMachinePool, VirtualMachinePoolStatus
from specs.vm import VirtualMachine, VirtualMachineStatus


def _replicas(rt: Runtime, name: str) -> list[str]:
    return [vm.metadata.name for vm in rt.cache.all("VirtualMachine", VirtualMachine)
            if vm.metadata.labels.get(POOL_LABEL) == name]


def _stored(rt: Runtime, pool: VirtualMachinePool) -> dict[tuple[str, str], Resource]:
    """The replica objects as the store has them, for planning only what is missing or differs."""
    stored: dict[tuple[str, str], Resource] = {}
    for index in range(pool.spec.replicas):
        for kind, obj_name in zip(("VirtualMachine", "Disk"), replica_names(pool.metadata.name, index), strict=True):
            obj = rt.cache.specs[kind].get(obj_name)
            if obj is not None:
                stored[(kind, obj_name)] = obj
    return stored


def _plan(rt: Runtime, pool: VirtualMachinePool) -> tuple[Plan | None, list[str]]:
    """(the plan, or None when the base disk is missing; the existing replica VMs)."""
    base = rt.cache.get("Disk", pool.spec.baseDisk, Disk)
    sd = pool.spec.storageDomain or (base.spec.storageDomain if base else None)
    existing = _replicas(rt, pool.metadata.name)
    if sd is None:
        return None, existing
    return plan_pool(pool, sd, existing, _stored(rt, pool)), existing


async def reconcile_pool(rt: Runtime, name: str) -> Result | None:
    pool = rt.cache.get("VirtualMachinePool", name, VirtualMachinePool)
    if pool is None:
        return None
    prev = rt.cache.status["VirtualMachinePool"].get(name)
    plan, existing = _plan(rt, pool)
    if plan is None:
        status = VirtualMachinePoolStatus(
            observedGeneration=pool.metadata.generation,
            conditions=rt.with_times(
                (cond("Ready", False, "BaseDiskMissing", f"disk {pool.spec.baseDisk} not found"),), prev
            ),
        )
        await rt.write_status("VirtualMachinePool", name, status)
        return None
    if plan:
        result = await rt.executor.execute(plan, rt)
        for action in result.done:
            if isinstance(action, ApplyObjects):
                await rt.emit(pool, "ReplicasUpdated", f"{len(action.objects)} replica object(s) created or updated",
                              source="pool-controller")
            elif isinstance(action, DeleteObjects):
                await rt.emit(pool, "ScaledDown", f"deleted {len(action.refs) // 2} replica(s)",
                              source="pool-controller")
        if result.error is not None:
            raise result.error
    wanted = {replica_names(name, i)[0] for i in range(pool.spec.replicas)} if pool.metadata.deletionTimestamp is None \
        else set()
    replicas = [vm for vm in existing if vm in wanted]
    ready = sum(
        1
        for vm in replicas
        if isinstance(s := rt.cache.status["VirtualMachine"].get(vm), VirtualMachineStatus) and s.phase == "Running"
    )
    status = VirtualMachinePoolStatus(
        observedGeneration=pool.metadata.generation,
        replicas=len(replicas),
        readyReplicas=ready,
        phase="Ready" if ready == pool.spec.replicas else "Scaling",
        conditions=rt.with_times(
            (cond("Ready", ready == pool.spec.replicas, "Replicas", f"{ready}/{pool.spec.replicas} running"),), prev
        ),
    )
    await rt.write_status("VirtualMachinePool", name, status)
    return None


async def _apply(a: ApplyObjects, rt: Runtime) -> None:
    owner = rt.cache.specs["VirtualMachinePool"].get(a.owner.partition("/")[2])
    cid = (owner.metadata.correlationId if owner is not None else None) or "pool"
    await rt.store.apply(list(a.objects), correlation_id=cid)


async def _delete(a: DeleteObjects, rt: Runtime) -> None:
    owner = rt.cache.specs["VirtualMachinePool"].get(a.owner.partition("/")[2])
    cid = (owner.metadata.correlationId if owner is not None else None) or "pool"
    for kind, name in a.refs:
        await rt.store.delete(kind, name, correlation_id=cid)


async def preview_pool(rt: Runtime, change: Change) -> Preview:
    pool = change.after if isinstance(change.after, VirtualMachinePool) else None
    if pool is None:
        return Preview(Plan(), note="the replicas stay (delete them, or scale to 0 first)")
    plan, _ = _plan(rt, pool)
    if plan is None:
        return Preview(Plan(), note=f"waiting: disk {pool.spec.baseDisk} not found")
    return Preview(plan)


def _pool_of_vm(rt: Runtime, vm: str, before: Any, after: Any) -> Iterable[str]:
    obj = rt.cache.get("VirtualMachine", vm, VirtualMachine)
    pool = obj.metadata.labels.get(POOL_LABEL) if obj is not None else None
    return (pool,) if pool else ()


HANDLERS: dict[type, Handler] = {ApplyObjects: _apply, DeleteObjects: _delete}

CONTROLLER = Controller(
    kind="VirtualMachinePool",
    reconcile=reconcile_pool,
    scope=own_cluster,
    watches=(Watch("VirtualMachine", "status", _pool_of_vm),),
    plan=preview_pool,
    handlers=HANDLERS,
)
