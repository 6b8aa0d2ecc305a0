"""Balancing and power saving, pure: the balancer reaches a fixed point and stops; power saving packs,
powers off beyond the spare hosts after the idle time and powers on when a VM needs room."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta

import pytest

from reconcilers.cluster.actions import RequestMigration, RequestPower
from reconcilers.cluster.balance import Layout, PlacedVm, load_percent, plan_balance
from reconcilers.cluster.power import PowerHost, plan_power_saving
from reconcilers.domain import HostName
from reconcilers.scheduler import ClusterPolicy, HostView, Request, place
from specs.cluster import BalancingPolicy, PowerSavingPolicy

GIB = 1 << 30
EVEN = ClusterPolicy("EvenlyDistributed", cpu_overcommit=1.0, memory_overcommit=1.0)
PACK = ClusterPolicy("PowerSaving", cpu_overcommit=1.0, memory_overcommit=1.0)
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def host(name: str, cpus: int = 16, memory: int = 64 * GIB, **kw: object) -> HostView:
    return HostView(name=HostName(name), cluster="c", ready=True, maintenance=False, labels={}, cpus=cpus,
                    memory_bytes=memory, **kw)  # type: ignore[arg-type]


def vm(name: str, on: str, cpus: int = 1, memory: int = 4 * GIB, **kw: object) -> PlacedVm:
    return PlacedVm(name, on, Request(vm=name, cluster="c", cpus=cpus, memory_bytes=memory, **kw))  # type: ignore[arg-type]


def with_allocations(hosts: list[HostView], vms: list[PlacedVm]) -> list[HostView]:
    out = []
    for h in hosts:
        mine = [v for v in vms if v.host == h.name]
        out.append(dataclasses.replace(
            h, allocated_cpus=sum(v.request.cpus for v in mine),
            allocated_memory_bytes=sum(v.request.memory_bytes for v in mine), vm_count=len(mine),
            groups=frozenset(g for v in mine for g in (v.request.affinity_group, v.request.anti_affinity_group) if g)))
    return out


def apply_moves(vms: list[PlacedVm], moves: tuple[RequestMigration, ...]) -> list[PlacedVm]:
    where = {m.vm: m.destination for m in moves}
    for m in moves:
        assert next(v for v in vms if v.name == m.vm).host == m.source
    return [dataclasses.replace(v, host=where.get(v.name, v.host)) for v in vms]


def energy(hosts: list[HostView], vms: list[PlacedVm], policy: ClusterPolicy) -> float:
    return Layout(with_allocations(hosts, vms), vms, policy).energy()


@pytest.mark.parametrize("seed", range(30))
def test_balancer_reaches_a_fixed_point_and_stops(seed: int) -> None:
    rng = random.Random(seed)
    hosts = [host(f"h{i}", cpus=rng.choice((8, 16, 32)), memory=rng.choice((32, 64, 128)) * GIB)
             for i in range(rng.randint(2, 6))]
    vms = [vm(f"v{i}", rng.choice([h.name for h in hosts[:2]]), cpus=rng.randint(1, 4),
              memory=rng.choice((1, 2, 4, 8)) * GIB) for i in range(rng.randint(4, 30))]
    policy = BalancingPolicy(thresholdPercent=rng.choice((5, 10, 20)), maxMigrationsPerInterval=rng.randint(1, 4))
    seen = set()
    rounds = 0
    while True:
        views = with_allocations(hosts, vms)
        decision = plan_balance("c", views, vms, EVEN, policy)
        if not decision.moves:
            break
        assert len(decision.moves) <= policy.maxMigrationsPerInterval
        before = energy(hosts, vms, EVEN)
        vms = apply_moves(vms, decision.moves)
        assert energy(hosts, vms, EVEN) < before  # strictly better every interval: no cycle possible
        placement = tuple(sorted((v.name, v.host) for v in vms))
        assert placement not in seen, "a placement came back: the balancer oscillates"
        seen.add(placement)
        rounds += 1
        assert rounds < 200
    # At the fixed point it stays put, and either the spread is within the threshold or no single move helps.
    views = with_allocations(hosts, vms)
    assert not plan_balance("c", views, vms, EVEN, policy).moves
    layout = Layout(views, vms, EVEN)
    if layout.spread() > policy.thresholdPercent:
        for v in vms:
            for h in hosts:
                if h.name != v.host and layout.fits(v, h.name) and layout.load(h.name) < layout.load(v.host):
                    assert layout.energy_after(v, h.name) >= layout.energy() - 1e-9


def test_balancer_moves_toward_the_least_loaded_host_within_budget_and_in_flight() -> None:
    hosts = [host("a"), host("b"), host("c")]
    vms = [vm(f"v{i}", "a", cpus=2, memory=8 * GIB) for i in range(6)]
    views = with_allocations(hosts, vms)
    decision = plan_balance("c", views, vms, EVEN, BalancingPolicy(thresholdPercent=10, maxMigrationsPerInterval=2))
    assert len(decision.moves) == 2
    assert {m.destination for m in decision.moves} == {"b", "c"}
    assert all(m.source == "a" and m.impact == "migration" for m in decision.moves)
    assert decision.spread == pytest.approx(75.0) and decision.spread_after < decision.spread
    held = plan_balance("c", views, vms, EVEN, BalancingPolicy(thresholdPercent=10, maxMigrationsPerInterval=2),
                        in_flight=2)
    assert not held.moves and "still running" in held.note


def test_balancer_is_quiet_within_the_threshold_and_off_for_other_policies() -> None:
    hosts = [host("a"), host("b")]
    vms = [vm("v1", "a", memory=8 * GIB), vm("v2", "b", memory=4 * GIB)]
    views = with_allocations(hosts, vms)
    assert not plan_balance("c", views, vms, EVEN, BalancingPolicy(thresholdPercent=10)).moves
    lopsided = [vm(f"v{i}", "a", memory=8 * GIB) for i in range(5)]
    views = with_allocations(hosts, lopsided)
    assert plan_balance("c", views, lopsided, EVEN, BalancingPolicy(thresholdPercent=10)).moves
    assert not plan_balance("c", views, lopsided, PACK, BalancingPolicy(thresholdPercent=10)).moves
    assert not plan_balance("c", views, lopsided, EVEN, BalancingPolicy(enabled=False)).moves
    none = ClusterPolicy("None", 1.0, 1.0)
    assert not plan_balance("c", views, lopsided, none, BalancingPolicy(thresholdPercent=10)).moves


def test_balancer_respects_placement_rules_and_soft_affinity() -> None:
    hosts = [host("a"), host("b"), host("c"), dataclasses.replace(host("d"), maintenance=True)]
    vms = [
        vm("pinned", "a", memory=16 * GIB, allowed_hosts=("a",)),
        vm("web1", "a", memory=8 * GIB, anti_affinity_group="web"),
        vm("db1", "a", memory=8 * GIB, affinity_group="db"),
        vm("db2", "a", memory=8 * GIB, affinity_group="db"),
        vm("web2", "b", memory=1 * GIB, anti_affinity_group="web"),
        vm("web3", "c", memory=1 * GIB, anti_affinity_group="web"),
    ]
    views = with_allocations(hosts, vms)
    decision = plan_balance("c", views, vms, EVEN, BalancingPolicy(thresholdPercent=5, maxMigrationsPerInterval=10))
    moved = {m.vm for m in decision.moves}
    assert "pinned" not in moved  # allowedHosts
    assert "web1" not in moved  # anti-affinity: b and c already run a web VM
    assert not moved & {"db1", "db2"}  # soft affinity: the group is not split
    assert all(m.destination != "d" for m in decision.moves)  # maintenance
    assert not decision.moves and "no move" in decision.note


def test_soft_affinity_prefers_the_groups_host_but_yields_when_it_is_full() -> None:
    hosts = with_allocations([host("a"), host("b", memory=8 * GIB)],
                             [vm("db1", "b", memory=4 * GIB, affinity_group="db"), vm("x", "a", memory=32 * GIB)])
    req = Request(vm="db2", cluster="c", cpus=1, memory_bytes=2 * GIB, affinity_group="db")
    assert place(req, hosts, EVEN).host == "b"  # busier, but it runs the group
    big = dataclasses.replace(req, memory_bytes=6 * GIB)
    assert place(big, hosts, EVEN).host == "a"  # soft: no room with the group, so elsewhere


def power_hosts(views: list[HostView], phases: dict[str, str] | None = None,
                empty_since: dict[str, datetime] | None = None, agent: bool = True) -> list[PowerHost]:
    phases = phases or {}
    out = []
    for v in views:
        phase = phases.get(v.name, "Ready")
        ready = phase in ("Ready", "PoweringOff")
        out.append(PowerHost(dataclasses.replace(v, ready=ready), phase, agent,
                             (empty_since or {}).get(v.name) if v.vm_count == 0 else None))
    return out


def test_power_saving_evacuates_a_lightly_loaded_host_onto_the_busiest_that_stays_below_high() -> None:
    vms = [vm(f"v{i}", "a", memory=8 * GIB) for i in range(5)] + [vm("lonely", "b", memory=4 * GIB)]
    views = with_allocations([host("a"), host("b"), host("c")], vms)
    decision = plan_power_saving("c", power_hosts(views), vms, (), PACK, PowerSavingPolicy(), BalancingPolicy(), NOW)
    assert [(a.vm, a.destination) for a in decision.actions if isinstance(a, RequestMigration)] == [("lonely", "a")]
    # Not when it would push the target above highUtilizationPercent.
    full = [vm(f"v{i}", "a", memory=8 * GIB) for i in range(7)] + [vm("lonely", "b", memory=8 * GIB)]
    views = with_allocations([host("a"), host("b")], full)
    assert not plan_power_saving("c", power_hosts(views), full, (), PACK,
                                 PowerSavingPolicy(lowUtilizationPercent=20, highUtilizationPercent=90),
                                 BalancingPolicy(), NOW).actions


def test_power_saving_powers_off_empty_hosts_beyond_spare_after_idle_time_only_with_an_agent() -> None:
    vms = [vm("v1", "a", memory=32 * GIB)]
    views = with_allocations([host("a"), host("b"), host("c")], vms)
    policy = PowerSavingPolicy(spareHosts=1, idleMinutesBeforePowerOff=10)
    fresh = {"b": NOW - timedelta(minutes=3), "c": NOW - timedelta(minutes=4)}
    early = plan_power_saving("c", power_hosts(views, empty_since=fresh), vms, (), PACK, policy, BalancingPolicy(), NOW)
    assert not early.actions and "powered off in" in early.note
    idle = {"b": NOW - timedelta(minutes=11), "c": NOW - timedelta(minutes=12)}
    late = plan_power_saving("c", power_hosts(views, empty_since=idle), vms, (), PACK, policy, BalancingPolicy(), NOW)
    assert late.actions == (RequestPower(cluster="c", host="c", state="off", reason=late.actions[0].reason),)
    no_agent = plan_power_saving("c", power_hosts(views, empty_since=idle, agent=False), vms, (), PACK, policy,
                                 BalancingPolicy(), NOW)
    assert not no_agent.actions
    spare = plan_power_saving("c", power_hosts(views, empty_since=idle), vms, (), PACK,
                              PowerSavingPolicy(spareHosts=2), BalancingPolicy(), NOW)
    assert not spare.actions


def test_power_saving_powers_a_host_on_for_a_vm_without_room_not_for_a_placement_rule() -> None:
    vms = [vm(f"v{i}", "a", cpus=2, memory=16 * GIB) for i in range(3)]
    views = with_allocations([host("a"), host("b")], vms)
    hosts = power_hosts(views, phases={"b": "PoweredOff"})
    assert load_percent(views[0], PACK) < 80  # not busy: only the waiting VM asks for the power-on
    big = Request(vm="big", cluster="c", cpus=2, memory_bytes=20 * GIB)
    decision = plan_power_saving("c", hosts, vms, (big,), PACK, PowerSavingPolicy(), BalancingPolicy(), NOW)
    assert decision.actions == (RequestPower(cluster="c", host="b", state="on", reason=decision.actions[0].reason),)
    assert decision.powering_on == "b" and "vm/big" in decision.actions[0].reason
    pinned = dataclasses.replace(big, allowed_hosts=("a",))
    assert not plan_power_saving("c", hosts, vms, (pinned,), PACK, PowerSavingPolicy(),
                                 BalancingPolicy(), NOW).actions
    starting = power_hosts(views, phases={"b": "PoweringOn"})
    waiting = plan_power_saving("c", starting, vms, (big,), PACK, PowerSavingPolicy(), BalancingPolicy(), NOW)
    assert not waiting.actions and waiting.powering_on == "b"


def test_power_saving_never_powers_off_the_host_it_would_need_again_at_once() -> None:
    vms = [vm(f"v{i}", "a", memory=14 * GIB) for i in range(4)]
    views = with_allocations([host("a"), host("b")], vms)
    assert load_percent(views[0], PACK) > 80
    idle = {"b": NOW - timedelta(hours=1)}
    decision = plan_power_saving("c", power_hosts(views, empty_since=idle), vms, (), PACK,
                                 PowerSavingPolicy(spareHosts=0), BalancingPolicy(), NOW)
    assert not decision.actions and "stays on" in decision.note
