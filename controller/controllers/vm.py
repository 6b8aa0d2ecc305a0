"""VirtualMachine controller: observe -> plan (reconcilers.vm) -> execute -> observe -> status.

After executing a plan the domain is observed again and re-planned; a non-empty re-plan is an
InconsistentResult (a bug): logged loudly, counted, reported as an event, and the key is requeued.
This controller is also the only mover of VMs: it starts, observes and collects live migrations
(``controller.controllers.migration_state``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from controller.adapters.libvirt.migration import MigrationJob
from controller.adapters.libvirt.observe import DomainEvent
from controller.common.errors import TransientError
from controller.controllers.common import on_host_readiness, own_cluster, refuse_disallowed_paths
from controller.controllers.migration_state import describe_outcome, note_request
from controller.controllers.vm_actions import HANDLERS
from controller.controllers.vm_inputs import record_placement, vm_inputs
from controller.controllers.vm_sync import vm_in_sync
from controller.runtime.context import Runtime
from controller.runtime.executor import ExecutionResult
from controller.runtime.registry import Controller, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.domain import DomainName, HostName, ObservedDomain
from reconcilers.migration.actions import MigrateDomain
from reconcilers.migration.plan import MigrationContext
from reconcilers.plan import Action, Plan
from reconcilers.vm.actions import DefineDomain, DestroyDomain, ShutdownDomain, StartDomain, UndefineDomain
from reconcilers.vm.adopt import ADOPTED_FROM
from reconcilers.vm.live import PENDING_DEADLINE_S, pending_key
from reconcilers.vm.plan import VmDecision, plan_vm
from specs.disk import Disk
from specs.host import Host
from specs.migration import Migration
from specs.vm import NicStatus, VirtualMachine, VirtualMachineStatus

log = logging.getLogger("virtplane.vm")

FINALIZER = "virtplane.io/domain"


async def _refresh(
    rt: Runtime, name: str, hosts: set[HostName], *, force: bool = False
) -> dict[HostName, ObservedDomain]:
    """Where the domain is, from the host caches; observed afresh only where the cache cannot be trusted:
    an event said it changed (dirty), the host was not listed on this connection yet, or ``force``."""
    for h in hosts:
        runtime = rt.hosts.hosts.get(h)
        if runtime is None or not runtime.ready:
            continue
        cache = runtime.domains
        if not (force or cache.dirty(name) or not runtime.last_listed
                or cache.listed_generation != runtime.conn.generation):
            continue
        since = cache.stamp()
        observed = await runtime.conn.observe_domain(DomainName(name))
        if observed is None:
            cache.drop(name, since=since)
        else:
            cache.put(observed, since=since)
    return rt.hosts.locate(name)


async def reconcile_vm(rt: Runtime, name: str) -> Result | None:
    vm = rt.cache.get("VirtualMachine", name, VirtualMachine)
    if vm is not None and vm.metadata.deletionTimestamp is None:
        await refuse_disallowed_paths(rt, vm, "vm-controller")
    if vm is not None:
        vm = await rt.ensure_finalizer(vm, FINALIZER)
    previous = rt.cache.status["VirtualMachine"].get(name)
    prev_status = previous if isinstance(previous, VirtualMachineStatus) else None
    relevant = set(rt.hosts.locate(name))
    if prev_status is not None and prev_status.host:
        relevant.add(HostName(prev_status.host))
    adopted_from = (vm.metadata.annotations or {}).get(ADOPTED_FROM) if vm is not None else None
    if adopted_from is not None:
        relevant.add(HostName(adopted_from))  # the domain being adopted, observed afresh
    finished = rt.migrations.collect(name)
    job = rt.migrations.jobs.get(name)
    for moving in (finished, job):
        if moving is not None:
            relevant |= {moving.source, moving.target}
    # Fresh job statistics while a migration runs; a guest's acknowledgement of a pending request (memory
    # balloon, unplug) may come without an event.
    watch_closely = finished is not None or job is not None or bool(rt.pending.keys(name))
    domains: Mapping[HostName, ObservedDomain] = await _refresh(rt, name, relevant, force=watch_closely)
    _prune_pending(rt, name, vm, domains)
    if finished is not None and vm is not None:
        reason, message, warning = describe_outcome(finished)
        await rt.emit(vm, reason, message, warning=warning, source="vm-controller")
    if job is not None and (seen := domains.get(job.source)) is not None and seen.job is not None:
        job.last = seen.job  # progress, for the Migration's status
    inputs = vm_inputs(rt, name, vm, domains)
    decision = plan_vm(inputs)
    restarted = False
    note_request(rt, decision.move, inputs.migration.request, decision.host)
    if job is not None and job.migration is not None:
        rt.queue.add(("Migration", job.migration))
    if vm is not None and decision.host:
        record_placement(rt, vm, decision.host)  # before any await: concurrent placements see it
    if decision.plan:
        relevant |= decision.plan.hosts() | ({decision.host} if decision.host else set())
        decision, domains, restarted = await _execute(rt, vm, name, decision, prev_status, domains, relevant)
    if decision.finished_teardown:
        rt.allocations.remove(name)
        if vm is not None and FINALIZER in vm.metadata.finalizers:
            await rt.store.remove_finalizer("VirtualMachine", name, FINALIZER)
        return None
    if vm is not None:
        await _write_vm_status(rt, vm, name, decision, domains, restarted=restarted)
    placed = rt.ha.get(name)
    if placed is not None and placed.host is not None and placed.host == decision.host and decision.phase == "Running":
        rt.ha.forget(name)  # restarted where the HA restart placed it
    waiting = rt.pending.waiting(name, PENDING_DEADLINE_S)
    requeue = min(filter(None, (decision.requeue_after, 2.0 if waiting else None)), default=None)
    return Result(requeue_after=requeue) if requeue else None


async def _execute(
    rt: Runtime, vm: VirtualMachine | None, name: str, decision: VmDecision, prev_status: VirtualMachineStatus | None,
    domains: Mapping[HostName, ObservedDomain], relevant: set[HostName],
) -> tuple[VmDecision, Mapping[HostName, ObservedDomain], bool]:
    """Run the plan, observe again and re-plan: (the new decision, what is observed, whether it restarted)."""
    drift = _drift(vm, prev_status, decision, domains)
    if drift is not None and vm is not None:
        await rt.emit(vm, drift[0], drift[1], warning=True, source="vm-controller")
    if vm is not None and decision.host and _places_anew(decision, prev_status, domains):
        # Record the host before defining anything there: a controller that dies between the two
        # leaves a status that points at the host, never a domain nobody knows about.
        await _write_vm_status(rt, vm, name, decision, domains, phase="Scheduling")
    result = await rt.executor.execute(decision.plan, rt)
    rt.counters["actions"] += len(result.done)
    _note_pending(rt, name, decision, result)
    if vm is not None and result.done:
        await rt.emit(vm, "PlanExecuted", result.describe_done(), source="vm-controller")
    # Define and start record what libvirt answered in the host cache; anything else is observed afresh.
    recorded = result.ok and all(isinstance(a, DefineDomain | StartDomain) for a in result.done)
    domains = await _refresh(rt, name, relevant, force=not recorded)
    if any(isinstance(a, StartDomain | ShutdownDomain | DestroyDomain | UndefineDomain) for a in result.done):
        for host in relevant:  # their VM counts changed: report them soon (coalesced by the queue)
            rt.queue.add_after(("Host", host), 2.0)
    if not result.ok:
        assert result.error is not None and result.failed is not None
        if vm is not None:
            await rt.emit(vm, "ActionFailed", f"{result.failed.name} {result.failed.target()}: {result.error}",
                          warning=True, source="vm-controller")
        await _write_vm_status(rt, vm, name, decision, domains, error=str(result.error))
        raise result.error
    again = plan_vm(vm_inputs(rt, name, vm, domains))
    if again.plan and not _expected_leftover(decision, again):
        rt.counters["inconsistent"] += 1
        leftover = ", ".join(f"{a.name}({a.target()})" for a in again.plan)
        log.error("InconsistentResult for VirtualMachine/%s: still planned after execution: %s", name, leftover)
        if vm is not None:
            await rt.emit(vm, "InconsistentResult", f"still planned after execution: {leftover}", warning=True,
                          source="vm-controller")
        await _write_vm_status(rt, vm, name, again, domains)
        raise TransientError(f"inconsistent result for {name}", retry_after=1.0)
    ha_restart = any(c.reason == "HARestart" for c in decision.conditions) and \
        any(isinstance(a, StartDomain) for a in result.done)
    return again, domains, _restarted(result.done) or ha_restart


def _note_pending(rt: Runtime, name: str, decision: VmDecision, result: ExecutionResult) -> None:
    """Remember the live requests the guest must acknowledge, so they are not made again."""
    for action in result.done:
        key = pending_key(action)
        if isinstance(action, StartDomain) and decision.desired is not None:
            # QEMU boots with maxSize; libvirt gives the balloon its target, the guest's driver follows.
            want = decision.desired
            key = f"memory:{want.memory_kib}" if want.memory_kib < want.max_memory_kib else None
        if key is not None:
            rt.pending.note(name, key)


def _prune_pending(
    rt: Runtime, name: str, vm: VirtualMachine | None, domains: Mapping[HostName, ObservedDomain]
) -> None:
    """Forget pending requests the guest has completed, or that the spec no longer asks for."""
    keys = rt.pending.keys(name)
    if not keys:
        return
    live = next((d.live for d in domains.values() if d.live is not None), None)
    want_kib = vm.spec.memory.size_bytes // 1024 if vm is not None else None
    for key in keys:
        kind, _, arg = key.partition(":")
        done = (
            live is None
            or (kind == "detach-disk" and all(d.target != arg for d in live.disks))
            or (kind == "detach-nic" and all(n.name != arg for n in live.nics))
            or (kind == "memory" and (live.memory_kib == int(arg) or want_kib != int(arg)))
        )
        if done:
            rt.pending.forget(name, key)


def _places_anew(
    decision: VmDecision, prev: VirtualMachineStatus | None, domains: Mapping[HostName, ObservedDomain]
) -> bool:
    return (
        (prev is None or prev.host != decision.host)
        and decision.host not in domains
        and any(isinstance(a, DefineDomain) for a in decision.plan)
    )


def _restarted(done: list[Action]) -> bool:
    names = [a.name for a in done]
    return "ShutdownDomain" in names and "StartDomain" in names[names.index("ShutdownDomain") :]


def _drift(
    vm: VirtualMachine | None,
    prev: VirtualMachineStatus | None,
    decision: VmDecision,
    domains: Mapping[HostName, ObservedDomain],
) -> tuple[str, str] | None:
    """A running VM whose domain changed behind our back (virsh destroy/undefine/edit, a crash)."""
    if vm is None or prev is None or prev.phase != "Running" or prev.host != decision.host or not decision.host:
        return None
    d = domains.get(decision.host)
    names = {a.name for a in decision.plan}
    if d is None:
        return (
            "DriftDetected",
            f"domain {vm.metadata.name} was undefined on {decision.host} outside virtplane; "
            "defining and starting it again",
        )
    if not d.active and "StartDomain" in names:
        if d.reason == "crashed":
            return (
                "GuestCrashed",
                f"{vm.metadata.name} crashed on {decision.host}; starting it again (runStrategy {vm.spec.runStrategy})",
            )
        if d.reason == "shutdown":
            return (
                "GuestShutdown",
                f"the guest shut itself down on {decision.host}; starting it again (runStrategy {vm.spec.runStrategy})",
            )
        return (
            "DriftDetected",
            f"domain {vm.metadata.name} was stopped ({d.reason}) on {decision.host} outside virtplane; "
            "starting it again",
        )
    if (
        "DefineDomain" in names
        and prev.observedGeneration == vm.metadata.generation
        and d.owner is not None
        and d.owner.generation == vm.metadata.generation
    ):
        return (
            "DriftDetected",
            f"the definition of {vm.metadata.name} on {decision.host} was edited outside virtplane; redefining it",
        )
    return None


def _expected_leftover(first: VmDecision, again: VmDecision) -> bool:
    """Teardown waits for a graceful shutdown; an Auto restart's start comes after the stop is seen."""
    return all(a.name in ("ShutdownDomain", "UndefineDomain", "StartDomain") for a in again.plan) and any(
        a.name == "ShutdownDomain" for a in first.plan
    )


async def _write_vm_status(
    rt: Runtime,
    vm: VirtualMachine | None,
    name: str,
    decision: VmDecision,
    domains: Mapping[HostName, ObservedDomain],
    error: str | None = None,
    *,
    phase: str | None = None,
    restarted: bool = False,
) -> None:
    if vm is None:
        return
    previous = rt.cache.status["VirtualMachine"].get(name)
    prev = previous if isinstance(previous, VirtualMachineStatus) else VirtualMachineStatus()
    d = domains.get(decision.host) if decision.host else None
    seen = (d.live or d.config) if d else None
    running = d is not None and d.state == "running"
    phase = phase or ("Running" if running and decision.phase == "Running" else decision.phase)
    job = rt.migrations.jobs.get(name)
    conditions = decision.conditions
    if error:
        conditions = (
            *conditions,
            conditions[0].model_copy(
                update={"type": "Degraded", "status": "True", "reason": "ActionFailed", "message": error}
            ),
        )
    status = VirtualMachineStatus(
        observedGeneration=vm.metadata.generation,
        phase=phase,
        conditions=rt.with_times(conditions, prev),
        correlationId=vm.metadata.correlationId,
        host=decision.host,
        uuid=(seen.uuid if seen else None) or prev.uuid,
        nics=tuple(NicStatus(name=n.name, mac=n.mac) for n in seen.nics if n.mac) if seen else prev.nics,
        cores=seen.vcpus if seen and running else None,
        memory=seen.memory_kib * 1024 if seen and running else None,
        startTime=prev.startTime
        if running and not restarted and prev.startTime and prev.phase in ("Running", "Migrating")
        else (rt.clock() if running else None),
        restartCount=prev.restartCount + (1 if restarted else 0),
        migration=(job.migration or "automatic") if job is not None and phase == "Migrating" else None,
    )
    await rt.write_status("VirtualMachine", name, status)


# ---------------------------------------------------------------- diff


async def preview_vm(rt: Runtime, change: Change) -> Preview:
    """The plan for a changed VM; when it moves the VM, also the plan once it runs on the target."""
    # The dry run's `after` is what would be stored: uid kept, generation moved on. Planning with it shows
    # every action the controller would run, the owner re-stamp included.
    vm = change.after if isinstance(change.after, VirtualMachine) else None
    if vm is None and change.action == "deleted":
        current = rt.cache.get("VirtualMachine", change.name, VirtualMachine)
        if current is not None:
            vm = current.model_copy(update={"metadata": current.metadata.model_copy(
                update={"deletionTimestamp": rt.clock()})})
    inputs = vm_inputs(rt, change.name, vm)
    decision = plan_vm(inputs)
    move = next((a for a in decision.plan if isinstance(a, MigrateDomain)), None)
    if move is None or vm is None:
        return Preview(decision.plan)
    # Once moved: the domain runs on the target, no migration in flight, nothing requested.
    seen = inputs.domains.get(move.host)
    moved = {h: d for h, d in inputs.domains.items() if h != move.host}
    if seen is not None:
        moved[move.target_host] = replace(seen, host=move.target_host, job=None)
    after_move = replace(vm_inputs(rt, change.name, vm, moved),
                         migration=MigrationContext(policy=inputs.migration.policy))
    arrived = plan_vm(after_move)
    return Preview(decision.plan, then=Plan(tuple(a for a in arrived.plan if not isinstance(a, MigrateDomain))))


async def preview_moves(rt: Runtime, host: HostName, changed: Host) -> Plan:
    """What the VMs placed on ``host`` would do if the Host were ``changed`` (maintenance: the migrations that
    evacuate it, or why a VM cannot move)."""
    actions: list[Action] = []
    for vm_name in sorted(v for v, usage in rt.allocations.by_vm.items() if usage.host == host):
        vm = rt.cache.get("VirtualMachine", vm_name, VirtualMachine)
        if vm is None:
            continue
        decision = plan_vm(vm_inputs(rt, vm_name, vm, host_override=changed))
        actions.extend(a for a in decision.plan if isinstance(a, MigrateDomain))
    return Plan(tuple(actions))


# ---------------------------------------------------------------- registration


def _vms_using_disk(rt: Runtime, disk: str, before: Any, after: Any) -> Iterable[str]:
    return [vm.metadata.name for vm in rt.cache.all("VirtualMachine", VirtualMachine)
            if any(a.disk == disk for a in vm.spec.disks)]


def _vms_using_storage(rt: Runtime, sd: str, before: Any, after: Any) -> Iterable[str]:
    """When the hosts reaching a storage domain change, the VMs with disks on it (placement filter)."""
    if getattr(before, "readyHosts", None) == getattr(after, "readyHosts", None):
        return ()
    disks = {d.metadata.name for d in rt.cache.all("Disk", Disk) if d.spec.storageDomain == sd}
    return [vm.metadata.name for vm in rt.cache.all("VirtualMachine", VirtualMachine)
            if any(a.disk in disks for a in vm.spec.disks)]


def _vms_using_network(rt: Runtime, network: str, before: Any, after: Any) -> Iterable[str]:
    return [vm.metadata.name for vm in rt.cache.all("VirtualMachine", VirtualMachine)
            if any(n.network == network for n in vm.spec.nics)]


def _vms_on_host(rt: Runtime, host: str, before: Any, after: Any) -> Iterable[str]:
    """Maintenance, labels: the host's VMs may have to move."""
    return [vm for vm, usage in list(rt.allocations.by_vm.items()) if usage.host == host]


def _vms_on_or_waiting_for_host(rt: Runtime, host: str, before: Any, after: Any) -> Iterable[str]:
    """A Host's spec changed: its VMs may have to move (maintenance, labels), and VMs of its cluster that
    found no host may fit now (spec.reserved, labels)."""
    spec = after if after is not None else before
    cluster = getattr(getattr(spec, "spec", None), "cluster", None)
    waiting = [name for name, vm in rt.cache.specs["VirtualMachine"].items()
               if getattr(vm.spec, "cluster", None) == cluster and rt.allocations.host_of(name) is None]
    return [*_vms_on_host(rt, host, before, after), *waiting]


def _vm_of_migration(rt: Runtime, migration: str, before: Any, after: Any) -> Iterable[str]:
    m = after if isinstance(after, Migration) else before
    return (m.spec.vm,) if isinstance(m, Migration) else ()


def _vms_of_host_phase(rt: Runtime, host: str, before: Any, after: Any) -> Iterable[str]:
    """A host's phase moved (Unreachable, NotResponding, Fenced, ...): its VMs report it."""
    if getattr(before, "phase", None) == getattr(after, "phase", None):
        return ()
    return _vms_on_host(rt, host, before, after)


def _vm_of_domain_event(rt: Runtime, event: DomainEvent) -> Iterable[str]:
    return (event.domain,) if event.domain in rt.cache.specs["VirtualMachine"] else ()


def _start(rt: Runtime) -> None:
    """Placements from status (so a restarted controller schedules around what runs), and the migration
    registry's wake-up (a finished migration requeues its VM and its Migration)."""
    for vm in rt.cache.all("VirtualMachine", VirtualMachine):
        status = rt.cache.status["VirtualMachine"].get(vm.metadata.name)
        if isinstance(status, VirtualMachineStatus) and status.host:
            record_placement(rt, vm, status.host)

    def requeue(job: MigrationJob) -> None:
        rt.queue.add(("VirtualMachine", job.vm))
        if job.migration is not None:
            rt.queue.add(("Migration", job.migration))

    rt.migrations.on_finish = requeue


CONTROLLER = Controller(
    kind="VirtualMachine",
    reconcile=reconcile_vm,
    scope=own_cluster,
    finalizer=FINALIZER,
    watches=(
        Watch("Disk", "status", _vms_using_disk),
        Watch("Network", "status", _vms_using_network),
        Watch("StorageDomain", "status", _vms_using_storage),
        Watch("Host", "spec", _vms_on_or_waiting_for_host),
        Watch("Host", "ready", on_host_readiness("VirtualMachine")),
        Watch("Host", "status", _vms_of_host_phase),
        Watch("Migration", "spec", _vm_of_migration),
    ),
    plan=preview_vm,
    handlers=HANDLERS,
    on_domain_event=_vm_of_domain_event,
    start=_start,
    in_sync=vm_in_sync,
)
