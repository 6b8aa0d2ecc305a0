"""Snapshot controller: observe the VM's domain and its libvirt snapshots -> plan (reconcilers.snapshot) ->
execute -> status. A revert is a request (an annotation), answered once and recorded in status.lastRevert.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from controller.adapters.libvirt import snapshots as lv
from controller.common.errors import ReconcileError, TransientError
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.executor import ExecutionResult
from controller.runtime.registry import GLOBAL, Controller, Handler, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.domain import FileSource, HostName, ObservedDomain
from reconcilers.plan import Plan
from reconcilers.snapshot.actions import CreateSnapshot, DeleteSnapshot, RevertSnapshot, SnapshotName
from reconcilers.snapshot.plan import (
    ObservedSnapshot,
    SnapshotDecision,
    SnapshotDisk,
    SnapshotInputs,
    plan_snapshot,
)
from reconcilers.storage.backends import backend_for
from specs.disk import Disk, DiskStatus
from specs.host import Host
from specs.meta import Condition, Resource
from specs.snapshot import RevertStatus, Snapshot, SnapshotStatus
from specs.storage import StorageDomain
from specs.vm import VirtualMachine, VirtualMachineStatus

log = logging.getLogger("virtplane.snapshot")

FINALIZER = "virtplane.io/snapshot"
RESYNC = 30.0
HOST_WAIT_S = 5.0


def _host_of(rt: Runtime, vm_name: str) -> HostName | None:
    status = rt.cache.status["VirtualMachine"].get(vm_name)
    if isinstance(status, VirtualMachineStatus) and status.host:
        runtime = rt.hosts.hosts.get(HostName(status.host))
        if runtime is not None and runtime.ready:
            return HostName(status.host)
    found = sorted(rt.hosts.locate(vm_name))
    return found[0] if found else None


def _disk_targets(rt: Runtime, vm: VirtualMachine, domain: ObservedDomain | None) -> tuple[dict[str, str],
                                                                                          dict[str, str]]:
    """{Disk name: guest target} for the VM's image disks as the domain has them, and {Disk name: format}."""
    config = (domain.live or domain.config) if domain is not None else None
    if config is None:
        return {}, {}
    by_source = {d.source: d.target for d in config.disks}
    targets: dict[str, str] = {}
    formats: dict[str, str] = {}
    for attachment in vm.spec.disks:
        status = rt.cache.status["Disk"].get(attachment.disk)
        disk = rt.cache.get("Disk", attachment.disk, Disk)
        if not isinstance(status, DiskStatus) or status.path is None or disk is None or disk.spec.lun is not None:
            continue
        # how the domain reaches the image: a file, or a network disk (nfs with access qemu)
        sd = rt.cache.get("StorageDomain", disk.spec.storageDomain or "", StorageDomain)
        source = backend_for(sd).disk_source(sd, status.path) if sd is not None else FileSource(status.path)
        if source in by_source:
            targets[attachment.disk] = by_source[source]
            formats[attachment.disk] = disk.spec.effective_format or "qcow2"
    return targets, formats


async def _inputs(rt: Runtime, snap: Snapshot, prev: SnapshotStatus | None, *, observe: bool = True
                  ) -> tuple[SnapshotInputs, lv.DomainSnapshots | None, dict[str, str]]:
    """The planner's inputs; ``observe``: ask libvirt (reconcile), else only the cache (diff)."""
    vm = rt.cache.get("VirtualMachine", snap.spec.vm, VirtualMachine)
    host = _host_of(rt, snap.spec.vm) if vm is not None else None
    if host is None and prev is not None and prev.host and snap.metadata.deletionTimestamp is not None:
        host = HostName(prev.host) if rt.hosts.ready(prev.host) else None
    conn = rt.hosts.hosts[host].conn if host is not None and observe else None
    domain = await conn.observe_domain(snap.spec.vm) if conn is not None else None
    if not observe and host is not None:
        domain = rt.hosts.hosts[host].domains.get(snap.spec.vm)
    seen = await lv.list_snapshots(conn, snap.spec.vm) if conn is not None else None
    targets, formats = _disk_targets(rt, vm, domain) if vm is not None else ({}, {})
    observed = seen.snapshots.get(snap.metadata.name) if seen is not None else None
    if not observe and prev is not None and prev.phase == "Ready" and prev.libvirtName:
        observed = _from_status(prev)
    inputs = SnapshotInputs(
        snapshot=snap, status=prev, vm_exists=vm is not None, host=host if domain is not None else None,
        domain_active=domain.active if domain is not None else None, targets=targets, formats=formats,
        observed=observed, should_run=vm is not None and vm.spec.runStrategy in ("Always", "RerunOnFailure"),
    )
    return inputs, seen, targets


def _unreached_host(rt: Runtime, snap: Snapshot) -> str | None:
    """The VM's host (from its status) when this replica does not reach it (yet), else None."""
    status = rt.cache.status["VirtualMachine"].get(snap.spec.vm)
    host = status.host if isinstance(status, VirtualMachineStatus) else None
    return host if host and not rt.hosts.ready(host) else None


def _from_status(status: SnapshotStatus) -> ObservedSnapshot:
    """What status says libvirt had (for diff, which does not ask libvirt)."""
    created = int(status.creationTime.timestamp()) if status.creationTime else 0
    return ObservedSnapshot(SnapshotName(status.libvirtName or ""), "other", created, bool(status.memory),
                            tuple(SnapshotDisk(d, True) for d in status.disks))


async def reconcile_snapshot(rt: Runtime, name: str) -> Result | None:
    snap = rt.cache.get("Snapshot", name, Snapshot)
    if snap is None:
        return None
    snap = await rt.ensure_finalizer(snap, FINALIZER)
    prev_any = rt.cache.status["Snapshot"].get(name)
    prev = prev_any if isinstance(prev_any, SnapshotStatus) else None
    unreached = _unreached_host(rt, snap)
    if unreached is not None and prev is not None and prev.phase is not None:
        # This replica has not reached the VM's host yet (it just started or took over): what the
        # snapshot looks like there is unknown, so the status stays as it is. The host's readiness wakes us.
        return Result(requeue_after=HOST_WAIT_S)
    inputs, seen, targets = await _inputs(rt, snap, prev)
    decision = plan_snapshot(inputs)
    result = await rt.executor.execute(decision.plan, rt)
    update = await _report(rt, snap, result)
    error = result.error
    if decision.finished_teardown or (snap.metadata.deletionTimestamp is not None and error is None):
        if FINALIZER in snap.metadata.finalizers:
            await rt.store.remove_finalizer("Snapshot", name, FINALIZER)
        return None
    if decision.plan and inputs.host is not None:
        seen = await lv.list_snapshots(rt.hosts.hosts[inputs.host].conn, snap.spec.vm)
        decision = plan_snapshot(SnapshotInputs(**{**inputs.__dict__, "status": _merged(prev, update),
                                                   "observed": seen.snapshots.get(name) if seen else None}))
    observed = seen.snapshots.get(name) if seen is not None else None
    await _write_status(rt, snap, prev, decision.phase, decision.conditions, observed, inputs.host, targets,
                        seen.vm_state_bytes.get(name) if seen is not None else None, update, error)
    if error is not None:
        if isinstance(error, TransientError):
            raise error
        return None
    return Result(requeue_after=RESYNC) if decision.phase in ("Pending", "Creating") else None


def _merged(prev: SnapshotStatus | None, update: Mapping[str, object]) -> SnapshotStatus:
    return (prev or SnapshotStatus()).model_copy(update=dict(update))


async def _report(rt: Runtime, snap: Snapshot, result: ExecutionResult) -> dict[str, object]:
    """Events for what was done, and the status fields it changes (lastRevert)."""
    update: dict[str, object] = {}
    for outcome in result.outcomes:
        action, seconds = outcome.action, outcome.seconds
        if isinstance(action, CreateSnapshot):
            await rt.emit(snap, "SnapshotCreated", f"{action.target()} in {seconds:.2f} s",
                          source="snapshot-controller")
            log.info("snapshot %s created in %.3f s", action.snapshot, seconds)
        elif isinstance(action, DeleteSnapshot):
            await rt.emit(snap, "SnapshotDeleted", f"{action.target()}" + ("" if outcome.value else " (already gone)"),
                          source="snapshot-controller")
        elif isinstance(action, RevertSnapshot):
            seconds = outcome.value if isinstance(outcome.value, float) else seconds  # measured around the revert
            await rt.emit(snap, "Reverted", f"{action.target()} in {seconds:.2f} s", source="snapshot-controller")
            rt.queue.add(("VirtualMachine", action.domain))
            update["lastRevert"] = RevertStatus(requested=action.requested, phase="Succeeded", time=rt.clock(),
                                                seconds=round(seconds, 3),
                                                message=f"reverted {action.domain} to {action.snapshot}")
    if result.failed is not None and result.error is not None:
        e = result.error
        await rt.emit(snap, "ActionFailed", f"{result.failed.name} {result.failed.target()}: {e}", warning=True,
                      source="snapshot-controller")
        if isinstance(result.failed, RevertSnapshot):
            update["lastRevert"] = RevertStatus(requested=result.failed.requested, phase="Failed", time=rt.clock(),
                                                message=str(e))
    return update


async def _write_status(rt: Runtime, snap: Snapshot, prev: SnapshotStatus | None, phase: str | None,
                        conditions: tuple[Condition, ...], seen: ObservedSnapshot | None, host: HostName | None,
                        targets: Mapping[str, str], size: int | None, update: Mapping[str, object],
                        error: ReconcileError | None) -> None:
    base = prev or SnapshotStatus()
    if error is not None and not isinstance(error, TransientError) and "lastRevert" not in update:
        phase = "Failed"
        conditions = (Condition(type="Ready", status="False", reason="ActionFailed", message=str(error)),)
    status = SnapshotStatus(
        observedGeneration=snap.metadata.generation,
        phase=phase,
        conditions=rt.with_times(conditions, prev),
        correlationId=snap.metadata.correlationId,
        creationTime=datetime.fromtimestamp(seen.creation_time, UTC) if seen else base.creationTime,
        libvirtName=seen.name if seen else base.libvirtName,
        disks=_disk_names(targets, seen) if seen else base.disks,
        memory=seen.memory if seen else base.memory,
        host=host or base.host,
        size=size if size is not None else base.size,
        lastRevert=update.get("lastRevert", base.lastRevert),
    )
    await rt.write_status("Snapshot", snap.metadata.name, status)  # Disks copied from it watch it


def _disk_names(targets: Mapping[str, str], seen: ObservedSnapshot) -> tuple[str, ...]:
    by_target = {t: d for d, t in targets.items()}
    return tuple(by_target.get(t, t) for t in seen.included_targets)


# ---------------------------------------------------------------- actions


async def _create(a: CreateSnapshot, rt: Runtime) -> None:
    await lv.create_snapshot(rt.hosts.connection(a.host), a)


async def _delete(a: DeleteSnapshot, rt: Runtime) -> bool:
    return await lv.delete_snapshot(rt.hosts.connection(a.host), a)  # False: it was already gone


async def _revert(a: RevertSnapshot, rt: Runtime) -> float:
    return await lv.revert_snapshot(rt.hosts.connection(a.host), a)


HANDLERS: dict[type, Handler] = {CreateSnapshot: _create, DeleteSnapshot: _delete, RevertSnapshot: _revert}


# ---------------------------------------------------------------- diff and registration


async def preview_snapshot(rt: Runtime, change: Change) -> Preview:
    """Planned from the cache and the Snapshot's status (what libvirt had when it was last looked at)."""
    snap = change.after if isinstance(change.after, Snapshot) else None
    if snap is None and change.action == "deleted":
        current = rt.cache.get("Snapshot", change.name, Snapshot)
        if current is not None:
            snap = current.model_copy(update={"metadata": current.metadata.model_copy(
                update={"deletionTimestamp": rt.clock()})})
    if snap is None:
        return Preview(Plan())
    prev = rt.cache.status["Snapshot"].get(snap.metadata.name)
    inputs, _, _ = await _inputs(rt, snap, prev if isinstance(prev, SnapshotStatus) else None, observe=False)
    decision: SnapshotDecision = plan_snapshot(inputs)
    note = None if decision.plan else (decision.conditions[0].message if decision.conditions else None)
    return Preview(decision.plan, note=note)


def snapshot_scope(cache: Cache, obj: Resource) -> str:
    """Led by the leader of the VM's cluster; a Snapshot of a VM that is gone, by the leader of the cluster
    of the host it was taken on (else the global scope)."""
    vm = cache.get("VirtualMachine", getattr(obj.spec, "vm", ""), VirtualMachine)
    if vm is not None:
        return vm.spec.cluster
    status = cache.status["Snapshot"].get(obj.metadata.name)
    host = cache.get("Host", getattr(status, "host", None) or "", Host)
    return host.spec.cluster if host is not None else GLOBAL


def _snapshots_on_host(rt: Runtime, host: str, before: Any, after: Any) -> Iterable[str]:
    """A host became reachable (or not): the snapshots of the VMs placed there."""
    vms = {vm for vm, usage in rt.allocations.by_vm.items() if usage.host == host}
    return [s.metadata.name for s in rt.cache.all("Snapshot", Snapshot) if s.spec.vm in vms]


CONTROLLER = Controller(
    kind="Snapshot",
    reconcile=reconcile_snapshot,
    scope=snapshot_scope,
    finalizer=FINALIZER,
    watches=(Watch("Host", "ready", _snapshots_on_host),),
    plan=preview_snapshot,
    handlers=HANDLERS,
)
