"""The Cluster controller's periodic policies: load balancing and power saving.

Every ``scheduling.balancing.intervalSeconds`` the Cluster controller gathers the cluster's hosts (capacity
net of ``spec.reserved``, allocation from placed VMs), its running VMs and the VMs waiting for room, and asks
the pure planners (``reconcilers.cluster``). Their actions are requests:
- ``RequestMigration`` creates a Migration object labelled ``virtplane.io/balancer: <cluster>``; the
  VirtualMachine controller carries it out like any other (progress in ``get migrations``).
- ``RequestPower`` records a power request (``Runtime.power``) that the Host controller carries out through
  the host's agent.
The time of the last run and when each host became empty are in memory: after a restart the balancer waits
one interval and the idle clock of an empty host starts again (a host is powered off later, never sooner).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from controller.controllers.vm_inputs import host_views, resolve_disks, resolve_networks
from controller.runtime.context import Runtime
from controller.runtime.ha import PolicyClock
from controller.runtime.registry import Handler
from reconcilers.cluster.actions import RequestMigration, RequestPower
from reconcilers.cluster.balance import BalanceDecision, PlacedVm, load_percent, plan_balance
from reconcilers.cluster.power import PowerDecision, PowerHost, plan_power_saving
from reconcilers.plan import Plan
from reconcilers.scheduler import ClusterPolicy, HostView, Request
from reconcilers.vm.plan import placement_request
from specs.cluster import Cluster
from specs.host import Host, HostStatus
from specs.migration import Migration, MigrationSpec
from specs.vm import VirtualMachine, VirtualMachineStatus

BALANCER_LABEL = "virtplane.io/balancer"
MIGRATION_TTL_S = 600
OPEN_MIGRATION = (None, "Pending", "Scheduling", "Running", "PostCopy")


@dataclass(frozen=True)
class PolicyPlan:
    balance: BalanceDecision
    power: PowerDecision
    spread: float

    @property
    def plan(self) -> Plan:
        return Plan((*self.balance.moves, *self.power.actions))

    @property
    def note(self) -> str:
        return "; ".join(n for n in (self.balance.note, self.power.note) if n)


def running_vms(rt: Runtime, cluster: str) -> list[PlacedVm]:
    """The cluster's VMs placed on a host and running there; movable unless migrating, being restarted, a
    balancer migration of it failed recently (while that Migration object is kept, ``MIGRATION_TTL_S``), or
    an operator moved it (while that Migration is kept, its ``ttlSeconds``): the balancer does not undo a
    move somebody asked for."""
    failed = failed_moves(rt, cluster) | operator_moves(rt)
    out = []
    for vm in rt.cache.all("VirtualMachine", VirtualMachine):
        if vm.spec.cluster != cluster:
            continue
        status = rt.cache.status["VirtualMachine"].get(vm.metadata.name)
        if not isinstance(status, VirtualMachineStatus) or status.host is None or status.phase != "Running":
            continue
        movable = status.migration is None and vm.metadata.name not in rt.ha \
            and vm.metadata.deletionTimestamp is None and vm.metadata.name not in failed
        out.append(PlacedVm(vm.metadata.name, status.host, _request(rt, vm), movable))
    return out


def waiting_vms(rt: Runtime, cluster: str) -> list[Request]:
    """VMs that should run but found no host (their Scheduled condition is False)."""
    out = []
    for vm in rt.cache.all("VirtualMachine", VirtualMachine):
        if vm.spec.cluster != cluster or vm.spec.runStrategy == "Halted":
            continue
        status = rt.cache.status["VirtualMachine"].get(vm.metadata.name)
        if not isinstance(status, VirtualMachineStatus) or status.host is not None:
            continue
        scheduled = next((c for c in status.conditions if c.type == "Scheduled"), None)
        if scheduled is not None and scheduled.status == "False" and scheduled.reason == "Unschedulable":
            out.append(_request(rt, vm))
    return out


def _request(rt: Runtime, vm: VirtualMachine) -> Request:
    return placement_request(vm, resolve_disks(rt, vm), resolve_networks(rt, vm))


def balancer_in_flight(rt: Runtime, cluster: str) -> int:
    count = 0
    for m in rt.cache.all("Migration", Migration):
        if m.metadata.labels.get(BALANCER_LABEL) != cluster:
            continue
        status = rt.cache.status["Migration"].get(m.metadata.name)
        if getattr(status, "phase", None) in OPEN_MIGRATION:
            count += 1
    return count


def failed_moves(rt: Runtime, cluster: str) -> set[str]:
    """VMs whose balancer / evacuation Migration failed and is still kept: not tried again meanwhile."""
    failed = set()
    for m in rt.cache.all("Migration", Migration):
        if m.metadata.labels.get(BALANCER_LABEL) == cluster and \
                getattr(rt.cache.status["Migration"].get(m.metadata.name), "phase", None) in ("Failed", "Aborted"):
            failed.add(m.spec.vm)
    return failed


def operator_moves(rt: Runtime) -> set[str]:
    """VMs with a Migration an operator asked for (not the balancer's nor power saving's), still kept."""
    return {m.spec.vm for m in rt.cache.all("Migration", Migration) if BALANCER_LABEL not in m.metadata.labels}


def power_hosts(rt: Runtime, cluster: str, views: tuple[HostView, ...], clock: PolicyClock,
                now: datetime) -> list[PowerHost]:
    out = []
    for view in views:
        host = rt.cache.get("Host", view.name, Host)
        status = rt.cache.status["Host"].get(view.name)
        phase = status.phase if isinstance(status, HostStatus) else None
        if rt.power.get(view.name) == "on":
            phase = "PoweringOn"  # asked; the Host controller has not written it yet
        if view.cpus == 0 and host is not None and isinstance(status, HostStatus) and status.capacity is not None:
            # Powered off: libvirt cannot say what it has; its status keeps what it had when it last answered.
            # Nor which storage it reaches: assume what it reached before (unknown = not a reason to refuse).
            view = dataclasses.replace(
                view, cpus=max(0, status.capacity.cpus - host.spec.reserved.cpus),
                memory_bytes=max(0, status.capacity.memory - host.spec.reserved.memory_bytes),
                storage_domains=None, networks=None)
        agent = host is not None and host.spec.powerManagement is not None \
            and host.spec.powerManagement.agent != "none"
        if view.vm_count == 0 and view.ready:
            since = clock.empty_since.setdefault(view.name, now)
        else:
            clock.empty_since.pop(view.name, None)
            since = None
        out.append(PowerHost(view, phase, agent, since))
    return out


def plan_policies(rt: Runtime, cluster: Cluster, clock: PolicyClock, now: datetime) -> PolicyPlan:
    """What balancing and power saving would do now for ``cluster`` (as stored, or as ``diff`` would store it)."""
    name = cluster.metadata.name
    s = cluster.spec.scheduling
    policy = ClusterPolicy(policy=s.policy, cpu_overcommit=s.cpuOvercommit, memory_overcommit=s.memoryOvercommit)
    views = host_views(rt, name, exclude_vm="")
    vms = running_vms(rt, name)
    in_flight = balancer_in_flight(rt, name)
    balance = plan_balance(name, views, vms, policy, s.balancing, in_flight)
    power = plan_power_saving(name, power_hosts(rt, name, views, clock, now), vms, waiting_vms(rt, name), policy,
                              cluster.spec.powerSaving, s.balancing, now, in_flight + len(balance.moves))
    usable = [v for v in views if v.ready and not v.maintenance and v.cpus > 0]
    loads = [load_percent(v, policy) for v in usable]
    return PolicyPlan(balance, power, max(loads) - min(loads) if len(loads) > 1 else 0.0)


async def request_migration(a: RequestMigration, rt: Runtime) -> str:
    """Create the Migration object (the VM controller carries it out)."""
    stamp = format(int(rt.clock().timestamp() * 1000) % (36**6), "x")
    name = f"{a.why}-{a.vm}"[: 63 - len(stamp) - 1].rstrip("-.") + "-" + stamp
    migration = Migration.model_validate({
        "apiVersion": "virtplane.io/v1", "kind": "Migration",
        "metadata": {"name": name, "labels": {BALANCER_LABEL: a.cluster}},
        "spec": MigrationSpec(vm=a.vm, targetHost=a.destination, ttlSeconds=MIGRATION_TTL_S).model_dump(),
    })
    await rt.store.apply([migration], correlation_id=f"{a.why}-{a.cluster}")
    return name


async def request_power(a: RequestPower, rt: Runtime) -> None:
    rt.power.request(a.host, a.state)
    rt.queue.add(("Host", a.host))


HANDLERS: dict[type, Handler] = {RequestMigration: request_migration, RequestPower: request_power}
