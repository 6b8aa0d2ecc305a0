"""VirtualMachine planning: (desired, observed, context) -> decision. Pure: no await, no clock, no I/O.

Rules, in order:
1. Deleted (or being deleted): shut down and undefine our domain on every host; nothing else.
2. Where: the host in status if the domain is there; else the host where our domain is found; else
   schedule (filters + weights). Hosts that do not answer are never acted on — and a VM whose host does
   not answer is Unknown, never restarted elsewhere here (that is HA's job, after fencing).
3. What: the DomainConfig built from the spec. A running guest gets live changes (disks, NICs, memory
   and vCPUs within their maxima) as live actions; anything else is a next-boot change that sets
   RestartRequired, or with updatePolicy Auto, restarts the guest. Nothing reboots a VM silently.
4. Run state per runStrategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconcilers.conditions import cond as _cond
from reconcilers.domain import (
    CPU_HOST_MODEL,
    CPU_HOST_PASSTHROUGH,
    DomainConfig,
    DomainName,
    DomainType,
    HostName,
    ObservedDomain,
)
from reconcilers.migration.plan import MigrationContext, MoveDecision, plan_move, plan_unowned
from reconcilers.plan import Action, Plan
from reconcilers.scheduler import ClusterPolicy, HostView, Request, host_names, place
from reconcilers.vm.actions import (
    DefineDomain,
    ShutdownDomain,
    StartDomain,
    UndefineDomain,
)
from reconcilers.vm.domain import ResolvedDisk, ResolvedNetwork, config_differences, desired_domain
from reconcilers.vm.live import PENDING_TYPES, cold_device_changes, live_actions, without_pending
from specs.meta import Condition
from specs.vm import VirtualMachine, VirtualMachineStatus

LIVE_FIELDS = frozenset({"disks", "nics", "memory_kib", "vcpus", "uuid"})


@dataclass(frozen=True)
class VmInputs:
    name: str
    vm: VirtualMachine | None
    status: VirtualMachineStatus | None
    disks: Mapping[str, ResolvedDisk]
    networks: Mapping[str, ResolvedNetwork]
    hosts: Sequence[HostView]  # a HostViews may build them only when needed
    policy: ClusterPolicy
    domains: Mapping[HostName, ObservedDomain]  # a domain of this name, per reachable host
    unreachable: frozenset[HostName] = frozenset()
    unlisted: frozenset[HostName] = frozenset()  # cluster hosts whose domains were not listed yet
    pending: Mapping[str, float] = field(default_factory=dict)  # pending_key -> seconds since requested
    domain_types: Mapping[HostName, DomainType] = field(default_factory=dict)
    shutdown_timeout_s: float = 60.0
    migration: MigrationContext = field(default_factory=MigrationContext)
    fenced: frozenset[HostName] = frozenset()  # hosts powered off by their agent (their VMs run nowhere)
    host_notes: Mapping[HostName, str] = field(default_factory=dict)  # why a silent host's VMs stay put
    ha_target: HostName | None = None  # where the HA restart after fencing placed this VM (host controller)
    ha_note: str | None = None  # why the HA restart could not place it
    powering_on: HostName | None = None  # a host of the cluster power saving is powering on for capacity


@dataclass(frozen=True)
class VmDecision:
    plan: Plan
    host: HostName | None
    phase: str
    conditions: tuple[Condition, ...] = ()
    desired: DomainConfig | None = None
    finished_teardown: bool = False  # deleted and nothing left: the finalizer may go
    move: MoveDecision | None = None  # what live migration decided (see reconcilers.migration)
    requeue_after: float | None = None  # observe again this soon (a migration in flight)


def _ours(vm: VirtualMachine | None, d: ObservedDomain) -> bool:
    return d.owner is not None and vm is not None and d.owner.uid == vm.metadata.uid


def plan_teardown(inputs: VmInputs) -> VmDecision:
    actions: list[Action] = []
    for host, d in sorted(inputs.domains.items()):
        if d.owner is None or (inputs.vm is not None and d.owner.uid != inputs.vm.metadata.uid):
            continue
        if d.active:
            actions.append(ShutdownDomain(host, d.name, inputs.shutdown_timeout_s, reason="VM deleted"))
        if d.persistent:
            actions.append(UndefineDomain(host, d.name, reason="VM deleted"))
    # A host that does not answer may still run it: wait rather than declare it gone.
    stuck = [h for h in inputs.unreachable if inputs.status and inputs.status.host == h]
    done = not actions and not stuck
    return VmDecision(Plan(tuple(actions)), None, "Stopping" if not done else "Stopped", finished_teardown=done)


def _should_run(vm: VirtualMachine, status: VirtualMachineStatus | None, d: ObservedDomain | None) -> bool | None:
    """True: start it if stopped; False: stop it if running; None: leave the run state alone."""
    strategy = vm.spec.runStrategy
    if strategy == "Always":
        return True
    if strategy == "Halted":
        return False
    if strategy == "Manual":
        return None
    # RerunOnFailure: start, and restart after a crash, but not after the guest shut itself down.
    if d is not None and d.state == "shutoff" and d.reason == "shutdown" and status and status.startTime:
        return None
    return True


def placement_request(
    vm: VirtualMachine, disks: Mapping[str, ResolvedDisk], networks: Mapping[str, ResolvedNetwork]
) -> Request:
    """What the scheduler needs to place ``vm``."""
    spec = vm.spec
    return Request(
        vm=vm.metadata.name,
        cluster=spec.cluster,
        cpus=spec.cpu.cores,
        memory_bytes=spec.memory.size_bytes,
        allowed_hosts=tuple(spec.placement.allowedHosts),
        host_selector=dict(spec.placement.hostSelector),
        affinity_group=spec.placement.affinityGroup,
        anti_affinity_group=spec.placement.antiAffinityGroup,
        storage_domains=frozenset(d.storage_domain for d in disks.values() if d.storage_domain),
        networks=frozenset(n.name for n in networks.values()),
    )


def _choose_host(inputs: VmInputs, vm: VirtualMachine) -> tuple[HostName | None, Condition]:
    """Where the VM is. A running copy of ours wins; then the host in status (sticky: only a migration,
    or HA after fencing, moves a VM); then a defined copy; only a VM found nowhere is placed anew. A VM whose
    host was fenced goes where the HA restart placed it."""
    ours = {h: d for h, d in inputs.domains.items() if _ours(vm, d)}
    status_host = HostName(inputs.status.host) if inputs.status and inputs.status.host else None
    known = host_names(inputs.hosts) | inputs.unreachable
    running = sorted(h for h, d in ours.items() if d.active)
    if running:
        host = status_host if status_host in running else running[0]
        return host, _cond("Scheduled", True, "Scheduled", f"on {host}")
    if status_host in inputs.fenced:
        if inputs.ha_target is not None:
            return inputs.ha_target, _cond("Scheduled", True, "HARestart",
                                           f"on {inputs.ha_target}: {status_host} was fenced")
        status_host = None  # its old host is off: placed anew (a non-HA VM only after the user asked)
    if status_host and status_host in known:
        return status_host, _cond("Scheduled", True, "Scheduled", f"on {status_host}")
    if ours:
        host = sorted(ours)[0]
        return host, _cond("Scheduled", True, "Scheduled", f"on {host}")
    if inputs.unlisted:
        # A host not looked at yet may hold this VM: never place it twice.
        waiting = ", ".join(sorted(inputs.unlisted))
        return None, _cond("Scheduled", False, "WaitingForHosts", f"not listed yet: {waiting}")
    placement = place(placement_request(vm, inputs.disks, inputs.networks), inputs.hosts, inputs.policy)
    if placement.host is None:
        return None, _cond("Scheduled", False, "Unschedulable", placement.explain())
    return placement.host, _cond("Scheduled", True, "Scheduled", f"on {placement.host}")


def _on_fenced_host(inputs: VmInputs, vm: VirtualMachine) -> VmDecision | None:
    """A VM whose host was fenced (powered off by its agent) and that runs nowhere we can see.

    Highly available: it goes where the HA restart placed it (``ha_target``), or waits for a place (the Host
    controller places every displaced HA VM by priority). Not highly available: it is reported down and not
    started anywhere — not on another host, not on its old host when that comes back — until its spec
    changes (any change acknowledges it; e.g. runStrategy Halted, then Always)."""
    status = inputs.status
    host = HostName(status.host) if status is not None and status.host else None
    if host is None or status is None or any(_ours(vm, d) and d.active for d in inputs.domains.values()):
        return None
    scheduled_off = _cond("Scheduled", False, "HostFenced", f"{host} was fenced")
    if not vm.spec.highAvailability.enabled:
        was_down = any(c.type == "Down" and c.status == "True" for c in status.conditions)
        if not was_down and host not in inputs.fenced:
            return None
        if was_down and (status.observedGeneration or 0) < (vm.metadata.generation or 0):
            return None  # the user changed the spec since: it runs again (placed anew if its host is still off)
        down = _cond("Down", True, "HostFenced", f"{host} was fenced and the VM is not highly available, so it "
                     "was not restarted; change its spec (e.g. runStrategy Halted, then Always) to start it again")
        return VmDecision(Plan(), host, "Stopped", (scheduled_off, _cond("Ready", False, "HostFenced", down.message),
                                                    down))
    if host not in inputs.fenced or inputs.ha_target is not None:
        return None  # running normally, or _choose_host takes it where the HA restart placed it
    why = inputs.ha_note or "waiting for the HA restart to place it"
    return VmDecision(Plan(), host, "Pending", (scheduled_off, _cond("Ready", False, "WaitingForHARestart",
                                                                     f"{host} was fenced; {why}")))


def plan_vm(inputs: VmInputs) -> VmDecision:
    vm = inputs.vm
    if vm is None or vm.metadata.deletionTimestamp is not None:
        return plan_teardown(inputs)
    missing = [a.disk for a in vm.spec.disks if a.disk not in inputs.disks or not inputs.disks[a.disk].ready]
    missing_nets = [
        n.network for n in vm.spec.nics if n.network not in inputs.networks or not inputs.networks[n.network].ready
    ]
    if missing or missing_nets:
        what = ", ".join([f"disk {d}" for d in missing] + [f"network {n}" for n in missing_nets])
        waiting = _cond("Ready", False, "WaitingForDependencies", f"{what} not ready")
        # The VM keeps its host: forgetting it would let it be placed anew while it may still run there
        # (a dependency reads not-ready for a while after a controller restart or a host loss).
        host = HostName(inputs.status.host) if inputs.status is not None and inputs.status.host else None
        here = inputs.domains.get(host) if host is not None else None
        running = here is not None and _ours(vm, here) and here.active
        return VmDecision(Plan(), host, "Running" if running else "Pending", (waiting,))

    fenced = _on_fenced_host(inputs, vm)
    if fenced is not None:
        return fenced
    host, scheduled = _choose_host(inputs, vm)
    if host is None:
        unschedulable = _cond("Ready", False, "Unschedulable", scheduled.message)
        if scheduled.reason == "Unschedulable" and inputs.powering_on is not None:
            unschedulable = _cond("Ready", False, "WaitingForHostPowerOn",
                                  f"host {inputs.powering_on} is being powered on for capacity (power saving); "
                                  f"now: {scheduled.message}")
        return VmDecision(Plan(), None, "Pending", (scheduled, unschedulable))
    if host in inputs.unreachable:
        note = inputs.host_notes.get(host)
        why = f"{host} does not answer" + (f"; {note}" if note else "")
        return VmDecision(Plan(), host, "Unknown", (scheduled, _cond("Ready", False, "HostNotResponding", why)))
    foreign = inputs.domains.get(host)
    if foreign is not None and not _ours(vm, foreign):
        return VmDecision(
            Plan(),
            None,
            "Failed",
            (
                scheduled,
                _cond(
                    "Ready",
                    False,
                    "NameConflict",
                    f"{host} has a domain named {vm.metadata.name} that virtplane does not own; rename the VM or "
                    "import the domain",
                ),
            ),
        )

    observed = inputs.domains.get(host)
    domain_type = inputs.domain_types.get(host, "kvm")
    desired = desired_domain(vm, inputs.status, inputs.disks, inputs.networks, domain_type, observed)
    move = _plan_move(inputs, vm, host, observed)
    if move is not None and move.moving:
        # A live migration runs (or starts now): nothing else touches the VM until it is over.
        assert move.condition is not None
        return VmDecision(
            Plan(move.actions),
            host,
            "Migrating",
            (scheduled, move.condition),
            desired,
            move=move,
            requeue_after=move.requeue_after,
        )
    actions, phase, conds = _plan_on_host(inputs, vm, host, desired, observed)
    if move is not None and move.condition is not None:
        conds = (*conds, move.condition)
    # Leftover definitions of ours on other hosts (e.g. after a move) that are not running.
    for other, d in sorted(inputs.domains.items()):
        if other != host and _ours(vm, d) and not d.active and d.persistent:
            actions.append(UndefineDomain(other, d.name, reason=f"stale copy; the VM lives on {host}"))
    return VmDecision(
        Plan(tuple(actions)),
        host,
        phase,
        (scheduled, *conds),
        desired,
        move=move,
        requeue_after=move.requeue_after if move is not None else None,
    )


def _plan_move(inputs: VmInputs, vm: VirtualMachine, host: HostName, d: ObservedDomain | None) -> MoveDecision | None:
    """Live migration applies to a running guest of ours (or one already moving)."""
    if inputs.migration.in_flight is None:
        if d is not None and _ours(vm, d) and d.job is not None and d.job.operation == "migration_out":
            return plan_unowned(d.job)
        if d is None or not _ours(vm, d) or d.state != "running" or d.config is None:
            return None
        if _should_run(vm, inputs.status, d) is False:
            return None
    return plan_move(
        inputs.migration,
        placement_request(vm, inputs.disks, inputs.networks),
        DomainName(vm.metadata.name),
        host,
        inputs.hosts,
        inputs.policy,
    )


def _plan_on_host(
    inputs: VmInputs, vm: VirtualMachine, host: HostName, desired: DomainConfig, d: ObservedDomain | None
) -> tuple[list[Action], str, tuple[Condition, ...]]:
    name = DomainName(vm.metadata.name)
    run = _should_run(vm, inputs.status, d)
    if d is None or not d.persistent or d.config is None:
        actions: list[Action] = [DefineDomain(host, desired, reason="not defined yet")]
        if run:
            actions.append(StartDomain(host, name, reason=f"runStrategy {vm.spec.runStrategy}"))
        return actions, "Starting" if run else "Stopped", (_cond("Ready", False, "Defining"),)

    actions = []
    cold: tuple[str, ...] = ()
    if d.active and d.live is not None:
        live_diff = config_differences(desired, d.live)
        if desired.cpu_model in (None, CPU_HOST_MODEL, CPU_HOST_PASSTHROUGH):
            # The live XML shows the model QEMU expanded these to; the persistent config is what counts.
            live_diff = tuple(f for f in live_diff if f != "cpu_model")
        cold = tuple(f for f in live_diff if f not in LIVE_FIELDS) + cold_device_changes(desired, d.live)
    persistent_diff = config_differences(desired, d.config)
    if desired.cpu_model is None:
        # No model asked for: libvirt writes its default into the definition (qemu64 for TCG domains).
        persistent_diff = tuple(f for f in persistent_diff if f != "cpu_model")
    if persistent_diff or desired.owner != d.config.owner:
        # On a running guest, only what hot-plug cannot do waits for the next boot.
        actions.append(
            DefineDomain(host, desired, next_boot=bool(cold), reason=_describe("persistent config", persistent_diff))
        )
    if not d.active or d.live is None:
        if run:
            actions.append(StartDomain(host, name, reason=f"runStrategy {vm.spec.runStrategy}; state {d.state}"))
            return actions, "Starting", (_cond("Ready", False, "Starting"),)
        return actions, "Stopped", (_cond("Ready", False, "Stopped", f"runStrategy {vm.spec.runStrategy}"),)

    if run is False:
        actions.append(ShutdownDomain(host, name, inputs.shutdown_timeout_s, reason="runStrategy Halted"))
        return actions, "Stopping", (_cond("Ready", False, "Stopping"),)

    if cold and vm.spec.updatePolicy == "Auto":
        actions.append(
            ShutdownDomain(
                host, name, inputs.shutdown_timeout_s, reason=_describe("updatePolicy Auto; needs a restart for", cold)
            )
        )
        actions.append(StartDomain(host, name, reason="restart to apply the new config"))
        return actions, "Starting", (_cond("Ready", False, "Restarting"),)
    live, waiting = without_pending(live_actions(host, name, desired, d.live), inputs.pending)
    actions += live
    conds: list[Condition] = list(waiting)
    if cold:
        conds.append(
            _cond(
                "RestartRequired",
                True,
                "ConfigChanged",
                _describe("a restart applies", cold) + " (updatePolicy Manual)",
            )
        )
    ready = not actions and not any(c.type in PENDING_TYPES for c in waiting)
    conds.append(_cond("Ready", ready, "Running" if ready else "Updating"))
    return actions, "Running", tuple(conds)


SPEC_NAMES = {
    "uuid": "uuid",
    "vcpus": "cpu.cores",
    "max_vcpus": "cpu.maxCores",
    "memory_kib": "memory.size",
    "max_memory_kib": "memory.maxSize",
    "domain_type": "accelerator (kvm/tcg)",
    "machine": "machine",
    "cpu_model": "cpu.model",
    "firmware": "boot.firmware",
    "kernel_boot": "boot.kernel/initrd/cmdline",
    "disks": "disks",
    "nics": "nics",
}


def _describe(prefix: str, fields: tuple[str, ...]) -> str:
    """Name what changed as the user wrote it in the spec."""
    if not fields:
        return "owner stamp (generation)"
    return f"{prefix}: {', '.join(SPEC_NAMES.get(f, f) for f in fields)}"


__all__ = ["VmDecision", "VmInputs", "plan_teardown", "plan_vm"]
