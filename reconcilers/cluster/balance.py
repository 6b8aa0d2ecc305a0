"""Load balancing (``scheduling.balancing``): which running VMs to live-migrate so hosts even out. Pure.

A host's load is its allocation against its limit, in percent: the larger of vCPUs / (CPUs x cpuOvercommit)
and memory / (memory x memoryOvercommit), capacity already net of ``Host.spec.reserved``. The balancer looks
only at hosts that answer and are not in maintenance. When the spread (most loaded minus least loaded)
exceeds ``thresholdPercent``, it moves VMs off the most loaded host, at most ``maxMigrationsPerInterval``
per interval counting the ones still running.

No oscillation, by construction: a move is chosen only when it strictly lowers the sum of the squared host
loads, a quantity that depends on the placement alone. Each round lowers it, so no placement can come back
and the balancer reaches a fixed point where it plans nothing (tests/reconcilers/test_balance.py drives it
there). A move also has to pass every placement rule (allowedHosts, hostSelector, anti-affinity, storage,
networks, capacity), and it does not split a soft affinity group that lives on the source host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from reconcilers.cluster.actions import RequestMigration
from reconcilers.scheduler import ClusterPolicy, HostView, Request, reject_reason
from specs.cluster import BalancingPolicy

EPSILON = 1e-9


@dataclass(frozen=True)
class PlacedVm:
    """A VM running on ``host``. ``movable``: running, not migrating or being restarted."""

    name: str
    host: str
    request: Request
    movable: bool = True


@dataclass(frozen=True)
class BalanceDecision:
    moves: tuple[RequestMigration, ...] = ()
    spread: float = 0.0  # percentage points, before the moves
    spread_after: float = 0.0  # as the moves would leave it
    note: str = ""


def load_percent(host: HostView, policy: ClusterPolicy) -> float:
    cpu_limit = host.cpus * policy.cpu_overcommit
    mem_limit = host.memory_bytes * policy.memory_overcommit
    if cpu_limit <= 0 or mem_limit <= 0:
        return 100.0
    return 100.0 * max(host.allocated_cpus / cpu_limit, host.allocated_memory_bytes / mem_limit)


class Layout:
    """A mutable what-if copy of the cluster: hosts with their allocations and the VMs on each."""

    def __init__(self, hosts: Sequence[HostView], vms: Sequence[PlacedVm], policy: ClusterPolicy) -> None:
        self.policy = policy
        self.hosts: dict[str, HostView] = {h.name: h for h in hosts}
        self.vms: dict[str, list[PlacedVm]] = {h.name: [] for h in hosts}
        for vm in vms:
            if vm.host in self.vms:
                self.vms[vm.host].append(vm)

    def load(self, host: str) -> float:
        return load_percent(self.hosts[host], self.policy)

    def loads(self) -> dict[str, float]:
        return {name: self.load(name) for name in self.hosts}

    def spread(self) -> float:
        values = list(self.loads().values())
        return max(values) - min(values) if values else 0.0

    def energy(self) -> float:
        return sum(v * v for v in self.loads().values())

    def view_without(self, host: str, vm: PlacedVm) -> HostView:
        h = self.hosts[host]
        rest = [v for v in self.vms[host] if v.name != vm.name]
        return dataclasses.replace(
            h,
            allocated_cpus=h.allocated_cpus - vm.request.cpus,
            allocated_memory_bytes=h.allocated_memory_bytes - vm.request.memory_bytes,
            vm_count=h.vm_count - 1,
            groups=_groups(rest),
        )

    def view_with(self, host: str, vm: PlacedVm) -> HostView:
        h = self.hosts[host]
        return dataclasses.replace(
            h,
            allocated_cpus=h.allocated_cpus + vm.request.cpus,
            allocated_memory_bytes=h.allocated_memory_bytes + vm.request.memory_bytes,
            vm_count=h.vm_count + 1,
            groups=_groups([*self.vms[host], vm]),
        )

    def fits(self, vm: PlacedVm, target: str) -> bool:
        return reject_reason(self.hosts[target], vm.request, self.policy, moving=True) is None

    def move(self, vm: PlacedVm, target: str) -> None:
        source = vm.host
        self.hosts[source] = self.view_without(source, vm)
        self.hosts[target] = self.view_with(target, vm)
        self.vms[source] = [v for v in self.vms[source] if v.name != vm.name]
        self.vms[target].append(dataclasses.replace(vm, host=target))

    def energy_after(self, vm: PlacedVm, target: str) -> float:
        loads = self.loads()
        loads[vm.host] = load_percent(self.view_without(vm.host, vm), self.policy)
        loads[target] = load_percent(self.view_with(target, vm), self.policy)
        return sum(v * v for v in loads.values())

    def splits_affinity(self, vm: PlacedVm, target: str) -> bool:
        """Moving ``vm`` would take it away from members of its (soft) affinity group, towards none."""
        group = vm.request.affinity_group
        if not group:
            return False
        here = any(v.request.affinity_group == group and v.name != vm.name for v in self.vms[vm.host])
        there = any(v.request.affinity_group == group for v in self.vms[target])
        return here and not there


def _groups(vms: Sequence[PlacedVm]) -> frozenset[str]:
    return frozenset(g for v in vms for g in (v.request.affinity_group, v.request.anti_affinity_group) if g)


def balance_hosts(hosts: Sequence[HostView]) -> list[HostView]:
    """The hosts the balancer may move VMs between: answering and not in maintenance."""
    return [h for h in hosts if h.ready and not h.maintenance and h.cpus > 0 and h.memory_bytes > 0]


def plan_balance(
    cluster: str,
    hosts: Sequence[HostView],
    vms: Sequence[PlacedVm],
    policy: ClusterPolicy,
    balancing: BalancingPolicy,
    in_flight: int = 0,
) -> BalanceDecision:
    """The migrations that even out the cluster now (at most the interval's budget)."""
    usable = balance_hosts(hosts)
    if policy.policy != "EvenlyDistributed" or not balancing.enabled:
        return BalanceDecision(note=f"balancing is off (policy {policy.policy}, enabled {balancing.enabled})")
    if len(usable) < 2:
        return BalanceDecision(note="fewer than two hosts to balance between")
    layout = Layout(usable, vms, policy)
    before = layout.spread()
    if before <= balancing.thresholdPercent:
        return BalanceDecision(spread=before, spread_after=before,
                               note=f"spread {before:.0f} points is within the threshold "
                                    f"({balancing.thresholdPercent})")
    budget = balancing.maxMigrationsPerInterval - in_flight
    if budget <= 0:
        return BalanceDecision(spread=before, spread_after=before,
                               note=f"{in_flight} balancer migration(s) still running (at most "
                                    f"{balancing.maxMigrationsPerInterval} per interval)")
    moves: list[RequestMigration] = []
    moved: set[str] = set()
    while len(moves) < budget and layout.spread() > balancing.thresholdPercent:
        step = _best_move(layout, moved)
        if step is None:
            break
        vm, target = step
        moves.append(RequestMigration(
            cluster=cluster, vm=vm.name, source=vm.host, destination=target, why="balance",
            reason=f"balance: {vm.host} at {layout.load(vm.host):.0f}%, {target} at {layout.load(target):.0f}% "
                   f"(threshold {balancing.thresholdPercent} points)",
        ))
        moved.add(vm.name)
        layout.move(vm, target)
    after = layout.spread()
    note = "" if moves else f"spread {before:.0f} points, but no move makes it smaller within the placement rules"
    return BalanceDecision(tuple(moves), before, after, note)


def _best_move(layout: Layout, moved: set[str]) -> tuple[PlacedVm, str] | None:
    """The move off the most loaded host that lowers the energy most (ties: smaller VM, then names)."""
    loads = layout.loads()
    energy = layout.energy()
    for source in sorted(loads, key=lambda h: (-loads[h], h)):
        best: tuple[float, int, str, str] | None = None
        choice: tuple[PlacedVm, str] | None = None
        for vm in layout.vms[source]:
            if not vm.movable or vm.name in moved:
                continue
            for target in loads:
                if target == source or loads[target] >= loads[source]:
                    continue
                if not layout.fits(vm, target) or layout.splits_affinity(vm, target):
                    continue
                after = layout.energy_after(vm, target)
                if after >= energy - EPSILON:
                    continue
                key = (after, vm.request.memory_bytes, vm.name, target)
                if best is None or key < best:
                    best, choice = key, (vm, target)
        if choice is not None:
            return choice
    return None
