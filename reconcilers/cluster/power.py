"""Power saving (``scheduling.policy: PowerSaving`` + ``powerSaving``): pack VMs, power empty hosts off,
power them on again when capacity is needed. Pure: the clock is injected.

Each interval, in this order (at most one kind of step per interval, so every step sees the last one's
effect):
1. **Power on** when capacity is needed: a VM waits for a host because none has room for it (capacity,
   not placement rules), or every powered-on host is above ``highUtilizationPercent``. One powered-off host
   with an agent is powered on (the one with the most capacity; ties by name) unless one is already on its
   way; the waiting VM says so in its condition.
2. **Evacuate** the least loaded host below ``lowUtilizationPercent`` when all its VMs fit on the others
   without pushing any of them above ``highUtilizationPercent`` (live migrations, at most
   ``maxMigrationsPerInterval``). Nothing is evacuated while a host is powering on or VMs wait.
3. **Power off** empty hosts beyond ``spareHosts`` once they have stayed empty for
   ``idleMinutesBeforePowerOff`` (the host empty longest first; ties by name). A host without a power
   agent is never powered off (it could not be powered on again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconcilers.cluster.actions import RequestMigration, RequestPower
from reconcilers.cluster.balance import Layout, PlacedVm, load_percent
from reconcilers.plan import Action, Plan
from reconcilers.scheduler import ClusterPolicy, HostView, Request, reject_reason
from specs.cluster import BalancingPolicy, PowerSavingPolicy


@dataclass(frozen=True)
class PowerHost:
    """A host as power saving sees it."""

    view: HostView
    phase: str | None  # Host status phase: Ready, PoweredOff, PoweringOn, PoweringOff, ...
    agent: bool  # it has a power agent (spec.powerManagement)
    empty_since: datetime | None = None  # when it was last seen becoming empty (None: not empty)

    @property
    def name(self) -> str:
        return self.view.name

    @property
    def on(self) -> bool:
        return self.view.ready and not self.view.maintenance and self.phase not in ("PoweringOff", "PoweredOff")

    @property
    def off(self) -> bool:
        return self.phase == "PoweredOff"


@dataclass(frozen=True)
class PowerDecision:
    actions: tuple[Action, ...] = ()
    note: str = ""
    powering_on: str | None = None  # the host being (or about to be) powered on for capacity

    @property
    def plan(self) -> Plan:
        return Plan(self.actions)


def _would_take(host: PowerHost, req: Request, policy: ClusterPolicy) -> bool:
    """A powered-off host would take ``req`` once it is on."""
    return reject_reason(dataclasses.replace(host.view, ready=True), req, policy) is None


def plan_power_saving(
    cluster: str,
    hosts: Sequence[PowerHost],
    vms: Sequence[PlacedVm],
    waiting: Sequence[Request],
    policy: ClusterPolicy,
    saving: PowerSavingPolicy,
    balancing: BalancingPolicy,
    now: datetime,
    in_flight: int = 0,
) -> PowerDecision:
    if policy.policy != "PowerSaving":
        return PowerDecision(note=f"power saving is off (policy {policy.policy})")
    on = [h for h in hosts if h.on]
    on_views = [h.view for h in on]
    starting = next((h.name for h in hosts if h.phase == "PoweringOn"), None)
    if starting is not None:
        return PowerDecision(note=f"host {starting} is powering on", powering_on=starting)
    candidates = sorted((h for h in hosts if h.off and h.agent),
                        key=lambda h: (-h.view.memory_bytes, -h.view.cpus, h.name))
    for req in waiting:
        if any(reject_reason(v, req, policy) is None for v in on_views):
            continue  # it fits on a powered-on host: the VM controller places it
        chosen = next((h for h in candidates if _would_take(h, req, policy)), None)
        if chosen is not None:
            why = f"vm/{req.vm} has no room on the powered-on hosts"
            return PowerDecision((RequestPower(cluster=cluster, host=chosen.name, state="on",
                                               reason=f"power saving: {why}"),), powering_on=chosen.name)
    if on and all(load_percent(h.view, policy) > saving.highUtilizationPercent for h in on):
        why = f"every powered-on host is above {saving.highUtilizationPercent}%"
        if not candidates:
            return PowerDecision(note=f"{why}, and no powered-off host with a power agent is left")
        host = candidates[0].name
        return PowerDecision((RequestPower(cluster=cluster, host=host, state="on", reason=f"power saving: {why}"),),
                             powering_on=host)
    moves = _evacuate(cluster, on, vms, policy, saving, balancing.maxMigrationsPerInterval - in_flight)
    if moves:
        return PowerDecision(moves)
    return _power_off(cluster, on, policy, saving, now)


def _evacuate(cluster: str, on: Sequence[PowerHost], vms: Sequence[PlacedVm], policy: ClusterPolicy,
              saving: PowerSavingPolicy, budget: int) -> tuple[Action, ...]:
    if budget <= 0 or len(on) < 2:
        return ()
    layout = Layout([h.view for h in on], vms, policy)
    loads = layout.loads()
    low = sorted((h for h in loads if 0 < loads[h] < saving.lowUtilizationPercent), key=lambda h: (loads[h], h))
    for source in low:
        residents = sorted(layout.vms[source], key=lambda v: (-v.request.memory_bytes, v.name))
        if not residents or not all(v.movable for v in residents):
            continue
        trial = Layout([h.view for h in on], vms, policy)
        plan: list[RequestMigration] = []
        for vm in residents:
            target = _pack_target(trial, vm, source, saving)
            if target is None:
                plan = []
                break
            plan.append(RequestMigration(
                cluster=cluster, vm=vm.name, source=source, destination=target, why="evacuate",
                reason=f"power saving: {source} is at {loads[source]:.0f}% (below "
                       f"{saving.lowUtilizationPercent}%); emptying it so it can be powered off",
            ))
            trial.move(vm, target)
        if plan:
            return tuple(plan[:budget])
    return ()


def _pack_target(layout: Layout, vm: PlacedVm, source: str, saving: PowerSavingPolicy) -> str | None:
    """The busiest other host that takes ``vm`` and stays at or below the high-utilization mark."""
    best: tuple[float, str] | None = None
    for target in layout.hosts:
        if target == source or not layout.fits(vm, target):
            continue
        after = load_percent(layout.view_with(target, vm), layout.policy)
        if after > saving.highUtilizationPercent:
            continue
        key = (-layout.load(target), target)
        if best is None or key < best:
            best = key
    return best[1] if best is not None else None


def _power_off(cluster: str, on: Sequence[PowerHost], policy: ClusterPolicy, saving: PowerSavingPolicy,
               now: datetime) -> PowerDecision:
    empty = [h for h in on if h.view.vm_count == 0]
    surplus = len(empty) - saving.spareHosts
    if surplus <= 0:
        return PowerDecision(note=f"{len(empty)} empty host(s) powered on, {saving.spareHosts} kept as spare")
    loaded = [h for h in on if h.view.vm_count > 0]
    if loaded and all(load_percent(h.view, policy) > saving.highUtilizationPercent for h in loaded):
        # Powering the empty hosts off would leave only busy hosts: it would be powered on again at once.
        surplus = min(surplus, len(empty) - 1)
        if surplus <= 0:
            return PowerDecision(note=f"the other hosts are above {saving.highUtilizationPercent}%: "
                                      "an empty host stays on")
    idle = timedelta(minutes=saving.idleMinutesBeforePowerOff)
    ripe = sorted((h for h in empty if h.agent and h.empty_since is not None and now - h.empty_since >= idle),
                  key=lambda h: (h.empty_since, h.name))
    if not ripe:
        waiting = [h for h in empty if h.agent and h.empty_since is not None]
        if waiting:
            first = min(waiting, key=lambda h: (h.empty_since, h.name))
            assert first.empty_since is not None
            left = idle - (now - first.empty_since)
            return PowerDecision(note=f"{first.name} is empty; powered off in {left.total_seconds():.0f} s "
                                      f"(idleMinutesBeforePowerOff {saving.idleMinutesBeforePowerOff})")
        return PowerDecision(note="the empty hosts have no power agent")
    actions = tuple(RequestPower(cluster=cluster, host=h.name, state="off",
                                 reason=f"power saving: empty for {saving.idleMinutesBeforePowerOff} min or more, "
                                        f"beyond {saving.spareHosts} spare host(s)")
                    for h in ripe[:surplus])
    return PowerDecision(actions)

