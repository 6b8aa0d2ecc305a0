"""The Migration controller: reports one-shot migration requests (state shared with the VM controller:
``controller.controllers.migration_state``).

A Migration object is a one-shot request (``virtplane migrate vm/x [--to host]``), not part of Git. The VM
controller is the only one that moves VMs (so a VM has one mover): it reads the oldest open request for
the VM as an input of its plan, starts the migration, observes it and collects its outcome. This
controller only reports, from the shared ``Migrations`` registry:

    Pending     the request is stored; the VM controller has not looked at it yet
    Scheduling  waiting for a target or for a free slot (maxConcurrentPerHost)
    Running     data is moving (PostCopy after the switch): percent, data remaining in status
    Succeeded   the VM runs on the target; downtime as reported by QEMU
    Failed      rejected (target cannot take the VM), did not converge (fallback Abort), or libvirt failed

A finished Migration is deleted ``spec.ttlSeconds`` after its completionTime.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from controller.adapters.libvirt.migration import MigrationJob
from controller.common.errors import ReconcileError
from controller.controllers.migration_state import TERMINAL, describe_outcome
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.registry import GLOBAL, Controller, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond as _cond
from reconcilers.domain import HostName, ObservedDomain, ObservedJob
from reconcilers.plan import Plan
from specs.host import HostStatus
from specs.meta import Resource
from specs.migration import Migration, MigrationStatus
from specs.vm import VirtualMachine, VirtualMachineStatus

log = logging.getLogger("virtplane.migration")

PROGRESS_EVERY_S = 0.5


# ---------------------------------------------------------------- the Migration controller


async def reconcile_migration(rt: Runtime, name: str) -> Result | None:
    tracker = rt.migrations
    m = rt.cache.get("Migration", name, Migration)
    if m is None:
        tracker.results.pop(name, None)
        tracker.waiting.pop(name, None)
        return None
    previous = rt.cache.status["Migration"].get(name)
    prev = previous if isinstance(previous, MigrationStatus) else MigrationStatus()
    if prev.phase in TERMINAL:
        return await _expire(rt, m, prev)
    vm = rt.cache.get("VirtualMachine", m.spec.vm, VirtualMachine)
    vm_status = rt.cache.status["VirtualMachine"].get(m.spec.vm)
    here = vm_status.host if isinstance(vm_status, VirtualMachineStatus) else None
    job = tracker.by_migration(name)
    result = tracker.results.get(name)
    requeue: float | None = None
    if vm is None:
        status = _finished(rt, m, prev, "Failed", "VMNotFound", f"VirtualMachine {m.spec.vm} does not exist")
    elif result is not None:
        status = _from_result(rt, m, prev, result)
    elif job is not None and not job.done:
        status = _running(rt, m, prev, job)
        requeue = PROGRESS_EVERY_S
    elif job is not None:  # finished, not collected by the VM controller yet
        rt.queue.add(("VirtualMachine", m.spec.vm))
        return Result(requeue_after=PROGRESS_EVERY_S)
    elif prev.phase in ("Running", "PostCopy"):
        # We lost track of it (controller restart). Peer to peer, libvirt may still be migrating: ask it.
        where = await _where_libvirt_has_it(rt, m.spec.vm, prev)
        if where in ("migrating", "unknown"):
            why = ("libvirt is still migrating the VM" if where == "migrating"
                   else "waiting for both hosts to answer before judging where the VM runs")
            status = prev.model_copy(update={"conditions": rt.with_times((_cond(
                "Complete", False, "Running", f"the controller restarted; {why}"),), prev)})
            requeue = PROGRESS_EVERY_S
        else:
            here = where or here
            ok = here is not None and here == prev.targetHost
            message = (f"{prev.sourceHost} -> {here}, completed by libvirt while the controller restarted" if ok
                       else f"the controller restarted during the migration; the VM runs on {here or 'no host'}")
            status = _finished(rt, m, prev, "Succeeded" if ok else "Failed", "Interrupted", message)
    else:
        waiting = tracker.waiting.get(name)
        phase = "Scheduling" if waiting is not None else "Pending"
        message = waiting or f"waiting for the VM controller to move {m.spec.vm}"
        status = prev.model_copy(update={
            "phase": phase, "observedGeneration": m.metadata.generation, "sourceHost": here,
            "conditions": rt.with_times((_cond("Complete", False, phase, message),), prev)})
        rt.queue.add(("VirtualMachine", m.spec.vm))
        requeue = 2.0
    await rt.write_status("Migration", name, status)
    if status.phase in TERMINAL and prev.phase not in TERMINAL:
        cond = status.conditions[0] if status.conditions else None
        await rt.emit(m, status.phase or "", cond.message if cond else "", warning=status.phase != "Succeeded",
                      source="migration-controller")
        return await _expire(rt, m, status)
    return Result(requeue_after=requeue) if requeue else None


async def _where_libvirt_has_it(rt: Runtime, vm: str, prev: MigrationStatus) -> str | None:
    """"migrating" while the source still reports the outgoing migration job; "unknown" while a host is not
    connected yet (just after a restart) and not known to be down; else the host (source or target) where
    the domain runs, or None when neither runs it."""
    found: dict[str, ObservedDomain | None] = {}
    for host in (prev.sourceHost, prev.targetHost):
        if host is None:
            continue
        runtime = rt.hosts.hosts.get(HostName(host))
        if runtime is None or not runtime.ready:
            seen = rt.cache.status["Host"].get(host)
            if isinstance(seen, HostStatus) and seen.phase in ("NotResponding", "Fenced", "PoweredOff"):
                continue  # down: judge by the other host (and the VM's status)
            return "unknown"
        try:
            found[host] = await runtime.conn.observe_domain(vm)
        except ReconcileError as exc:
            log.info("migration of %s: cannot ask %s: %s", vm, host, exc)
    source = found.get(prev.sourceHost or "")
    if source is not None and source.job is not None and source.job.operation == "migration_out":
        return "migrating"
    for host, domain in found.items():
        if domain is not None and domain.state == "running":
            return host
    return None


def _progress(job: ObservedJob | None) -> dict[str, Any]:
    if job is None:
        return {}
    return {"dataTotal": job.data_total, "dataProcessed": job.data_processed, "dataRemaining": job.data_remaining,
            "percent": percent(job.data_total, job.data_remaining)}


def percent(total: int | None, remaining: int | None) -> int | None:
    if not total or remaining is None:
        return None
    return max(0, min(100, round(100 * (total - remaining) / total)))


def _running(rt: Runtime, m: Migration, prev: MigrationStatus, job: MigrationJob) -> MigrationStatus:
    last = job.last
    pct = percent(last.data_total, last.data_remaining) if last else None
    remaining = last.data_remaining if last else None
    mode = "post-copy" if job.post_copy else ("aborting" if job.aborting else "pre-copy")
    message = f"{job.source} -> {job.target}, {mode}" + (
        f", {pct}% ({remaining} bytes remaining)" if pct is not None else "")
    start = prev.startTime or rt.clock() - timedelta(seconds=job.elapsed(job.started))
    return prev.model_copy(update={
        "phase": "PostCopy" if job.post_copy else "Running", "observedGeneration": m.metadata.generation,
        "sourceHost": job.source, "targetHost": job.target, "startTime": start, **_progress(last),
        "conditions": rt.with_times((_cond("Complete", False, "Running", message),
                                     _cond("Progress", True, "Transferring", message)), prev)})


def _from_result(rt: Runtime, m: Migration, prev: MigrationStatus, job: MigrationJob) -> MigrationStatus:
    final = job.completed
    update: dict[str, Any] = {"sourceHost": job.source, "targetHost": job.target, **_progress(final or job.last)}
    if final is not None and final.downtime_ms is not None:
        update["downtimeMs"] = final.downtime_ms
    if job.error is None:
        if job.source == job.target:
            return _finished(rt, m, prev, "Succeeded", "AlreadyThere", job.reason, update)
        _, message, _ = describe_outcome(job)
        update.update(percent=100, dataRemaining=0)  # everything moved, whatever the last sample said
        return _finished(rt, m, prev, "Succeeded", "Migrated", message, update)
    if not job.vm:  # rejected by the planner
        return _finished(rt, m, prev, "Failed", "Rejected", job.error, update)
    reason, message, _ = describe_outcome(job)
    return _finished(rt, m, prev, "Failed", "NotConverged" if job.aborting else reason, message, update)


def _finished(rt: Runtime, m: Migration, prev: MigrationStatus, phase: str, reason: str, message: str,
              update: dict[str, Any] | None = None) -> MigrationStatus:
    return prev.model_copy(update={
        **(update or {}), "phase": phase, "observedGeneration": m.metadata.generation,
        "completionTime": prev.completionTime or rt.clock(),
        "conditions": rt.with_times((_cond("Complete", phase == "Succeeded", reason, message),), prev)})


async def _expire(rt: Runtime, m: Migration, status: MigrationStatus) -> Result | None:
    done = status.completionTime or rt.clock()
    left = (done + timedelta(seconds=m.spec.ttlSeconds) - rt.clock()).total_seconds()
    if left > 0:
        return Result(requeue_after=left)
    await rt.store.delete("Migration", m.metadata.name, correlation_id=m.metadata.correlationId or "ttl")
    rt.migrations.results.pop(m.metadata.name, None)
    log.info("Migration/%s deleted: finished %s ago (ttlSeconds %d)", m.metadata.name, done, m.spec.ttlSeconds)
    return None


# ---------------------------------------------------------------- registration


def migration_scope(cache: Cache, obj: Resource) -> str:
    """A Migration is led by the leader of its VM's cluster: only it has the host connections."""
    vm = cache.get("VirtualMachine", getattr(obj.spec, "vm", ""), VirtualMachine)
    return vm.spec.cluster if vm is not None else GLOBAL


def _migrations_of_vm(rt: Runtime, vm: str, before: Any, after: Any) -> Iterable[str]:
    """A VM's status moved (its host, its phase): its open Migrations report it."""
    if getattr(before, "host", None) == getattr(after, "host", None) and \
            getattr(before, "phase", None) == getattr(after, "phase", None):
        return ()
    return [m.metadata.name for m in rt.cache.all("Migration", Migration) if m.spec.vm == vm]


async def preview_migration(rt: Runtime, change: Change) -> Preview:
    """A Migration is a request to the VM controller; what it will do shows in the VM's plan."""
    m = change.after if isinstance(change.after, Migration) else None
    if m is None or change.action == "deleted":
        return Preview(Plan(), note="a deleted Migration only stops being reported")
    return Preview(Plan(), note=f"the VirtualMachine controller moves {m.spec.vm} (see `virtplane migrate`)")


CONTROLLER = Controller(
    kind="Migration",
    reconcile=reconcile_migration,
    scope=migration_scope,
    watches=(Watch("VirtualMachine", "status", _migrations_of_vm),),
    plan=preview_migration,
)
