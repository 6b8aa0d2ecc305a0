"""Snapshot controller: observe the VM's domain and its libvirt snapshots -> plan (reconcilers.snapshot) ->
execute -> status. Also executes CopySnapshotDisk for the Disk controller (a Disk whose source is a
Snapshot), since the shared executor does not know the snapshot actions.
"""

from __future__ import annotations

import logging
import os.path
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from controller.libvirt import snapshots as lv
from controller.libvirt.connection import HostConnection
from controller.libvirt.errors import ReconcileError, TransientError
from controller.runtime import Runtime
from controller.workqueue import Result
from reconcilers.domain import FileSource, HostName, ObservedDomain
from reconcilers.plan import Action, Plan
from reconcilers.snapshot import (
    CopySnapshotDisk,
    CreateSnapshot,
    DeleteSnapshot,
    ObservedSnapshot,
    RevertSnapshot,
    SnapshotInputs,
    plan_snapshot,
)
from specs.disk import Disk, DiskStatus
from specs.meta import Condition
from specs.snapshot import RevertStatus, Snapshot, SnapshotStatus
from specs.vm import VirtualMachine, VirtualMachineStatus

log = logging.getLogger("virtplane.snapshot")

FINALIZER = "virtplane.io/snapshot"
RESYNC = 30.0


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
    by_path = {d.source.path: d.target for d in config.disks if isinstance(d.source, FileSource)}
    targets: dict[str, str] = {}
    formats: dict[str, str] = {}
    for attachment in vm.spec.disks:
        status = rt.cache.status["Disk"].get(attachment.disk)
        disk = rt.cache.get("Disk", attachment.disk, Disk)
        if not isinstance(status, DiskStatus) or status.path is None or disk is None or disk.spec.lun is not None:
            continue
        if status.path in by_path:
            targets[attachment.disk] = by_path[status.path]
            formats[attachment.disk] = disk.spec.effective_format or "qcow2"
    return targets, formats


async def reconcile_snapshot(rt: Runtime, name: str) -> Result | None:
    snap = rt.cache.get("Snapshot", name, Snapshot)
    if snap is None:
        return None
    if snap.metadata.deletionTimestamp is None and FINALIZER not in snap.metadata.finalizers:
        snap = await rt.store.add_finalizer("Snapshot", name, FINALIZER)  # type: ignore[assignment]
    prev_any = rt.cache.status["Snapshot"].get(name)
    prev = prev_any if isinstance(prev_any, SnapshotStatus) else None
    vm = rt.cache.get("VirtualMachine", snap.spec.vm, VirtualMachine)
    host = _host_of(rt, snap.spec.vm) if vm is not None else None
    if host is None and prev is not None and prev.host and snap.metadata.deletionTimestamp is not None:
        runtime = rt.hosts.hosts.get(HostName(prev.host))
        host = HostName(prev.host) if runtime is not None and runtime.ready else None
    conn = rt.hosts.hosts[host].conn if host is not None else None
    domain = await conn.observe_domain(snap.spec.vm) if conn is not None else None
    seen = await lv.list_snapshots(conn, snap.spec.vm) if conn is not None else None
    targets, formats = _disk_targets(rt, vm, domain) if vm is not None else ({}, {})
    inputs = SnapshotInputs(
        snapshot=snap, status=prev, vm_exists=vm is not None, host=host if domain is not None else None,
        domain_active=domain.active if domain is not None else None, targets=targets, formats=formats,
        observed=seen.snapshots.get(name) if seen is not None else None,
        should_run=vm is not None and vm.spec.runStrategy in ("Always", "RerunOnFailure"),
    )
    decision = plan_snapshot(inputs)
    status_update: dict[str, object] = {}
    error: ReconcileError | None = None
    for action in decision.plan:
        assert conn is not None
        try:
            status_update.update(await _execute(rt, snap, action, conn))
        except ReconcileError as e:
            error = e
            await rt.emit(snap, "ActionFailed", f"{action.name} {action.target()}: {e}", warning=True,
                          source="snapshot-controller")
            if isinstance(action, RevertSnapshot):
                status_update["lastRevert"] = RevertStatus(requested=action.requested, phase="Failed",
                                                           time=rt.clock(), message=str(e))
            break
    if decision.finished_teardown or (snap.metadata.deletionTimestamp is not None and error is None):
        if FINALIZER in snap.metadata.finalizers:
            await rt.store.remove_finalizer("Snapshot", name, FINALIZER)
        return None
    if decision.plan and conn is not None:
        seen = await lv.list_snapshots(conn, snap.spec.vm)
        decision = plan_snapshot(SnapshotInputs(**{**inputs.__dict__, "status": _merged(prev, status_update),
                                                   "observed": seen.snapshots.get(name) if seen else None}))
    observed = seen.snapshots.get(name) if seen is not None else None
    await _write_status(rt, snap, prev, decision.phase, decision.conditions, observed, host, targets,
                        seen.vm_state_bytes.get(name) if seen is not None else None, status_update, error)
    if error is not None:
        if isinstance(error, TransientError):
            raise error
        return None
    return Result(requeue_after=RESYNC) if decision.phase in ("Pending", "Creating") else None


def _merged(prev: SnapshotStatus | None, update: Mapping[str, object]) -> SnapshotStatus:
    return (prev or SnapshotStatus()).model_copy(update=dict(update))


async def _execute(rt: Runtime, snap: Snapshot, action: Action, conn: HostConnection) -> dict[str, object]:
    started = time.perf_counter()
    if isinstance(action, CreateSnapshot):
        await lv.create_snapshot(conn, action)
        seconds = time.perf_counter() - started
        await rt.emit(snap, "SnapshotCreated", f"{action.target()} in {seconds:.2f} s", source="snapshot-controller")
        log.info("snapshot %s created in %.3f s", action.snapshot, seconds)
        return {}
    if isinstance(action, DeleteSnapshot):
        gone = await lv.delete_snapshot(conn, action)
        await rt.emit(snap, "SnapshotDeleted", f"{action.target()}" + ("" if gone else " (already gone)"),
                      source="snapshot-controller")
        return {}
    if isinstance(action, RevertSnapshot):
        seconds = await lv.revert_snapshot(conn, action)
        await rt.emit(snap, "Reverted", f"{action.target()} in {seconds:.2f} s", source="snapshot-controller")
        rt.queue.add(("VirtualMachine", action.domain))
        return {"lastRevert": RevertStatus(requested=action.requested, phase="Succeeded", time=rt.clock(),
                                           seconds=round(seconds, 3),
                                           message=f"reverted {action.domain} to {action.snapshot}")}
    raise TypeError(f"the snapshot controller has no handler for {action.name}")


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
    if await rt.write_status("Snapshot", snap.metadata.name, status) and status.phase == "Ready":
        for disk in rt.cache.all("Disk", Disk):  # Disks waiting for this snapshot as their source
            src = disk.spec.source
            if src is not None and src.snapshot is not None and src.snapshot.snapshot == snap.metadata.name:
                rt.queue.add(("Disk", disk.metadata.name))


def _disk_names(targets: Mapping[str, str], seen: ObservedSnapshot) -> tuple[str, ...]:
    by_target = {t: d for d, t in targets.items()}
    return tuple(by_target.get(t, t) for t in seen.included_targets)


def ready_snapshot_disks(rt: Runtime) -> dict[str, tuple[str, ...]]:
    """{Snapshot name: Disks it holds} for the Ready snapshots (sources of Disks)."""
    return {name: s.disks for name, s in rt.cache.status["Snapshot"].items()
            if isinstance(s, SnapshotStatus) and s.phase == "Ready"}


async def execute_copy(action: CopySnapshotDisk) -> None:
    dest = os.path.join(action.dest_dir, action.volume.name)
    if os.path.exists(dest):
        return
    await lv.copy_snapshot_disk(action.source_path, action.snapshot, dest, action.volume.format)


def copy_actions(plan: Plan) -> tuple[Plan, list[CopySnapshotDisk]]:
    """Split off the CopySnapshotDisk actions, which this module executes (the executor does not know them)."""
    copies = [a for a in plan if isinstance(a, CopySnapshotDisk)]
    return Plan(tuple(a for a in plan if not isinstance(a, CopySnapshotDisk))), copies
