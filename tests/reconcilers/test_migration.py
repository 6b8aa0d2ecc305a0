"""Live migration planning: when a VM moves, where, within which limits, and the fallback of a stuck one."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconcilers.domain import HostName, ObservedDomain, ObservedJob
from reconcilers.migration.actions import AbortMigration, MigrateDomain, StartPostCopy
from reconcilers.migration.plan import InFlight, MigrationContext, MigrationRequest
from reconcilers.plan import Impact
from reconcilers.vm.plan import plan_vm
from specs.cluster import MigrationPolicy
from specs.vm import VirtualMachineStatus
from tests.reconcilers.sim import apply_plan
from tests.reconcilers.test_vm import H1, H2, converge, host, inputs, make_vm

H3 = HostName("h3")


def running_on(h: HostName, **spec: Any) -> dict[HostName, ObservedDomain]:
    vm = make_vm(placement={"allowedHosts": [h]}, **spec)
    domains = converge(vm)
    assert list(domains) == [h] and domains[h].state == "running"
    return domains


def test_vm_moves_when_its_host_is_no_longer_allowed() -> None:
    domains = running_on(H1)
    vm = make_vm(placement={"allowedHosts": [H2]})
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1),
                              migration=MigrationContext(shared_storage=True)))
    assert [a.name for a in decision.plan] == ["MigrateDomain"]
    action = decision.plan.actions[0]
    assert isinstance(action, MigrateDomain) and (action.host, action.target_host) == (H1, H2)
    assert decision.plan.impact == Impact.MIGRATION and decision.phase == "Migrating"
    assert "not in placement.allowedHosts" in action.reason
    after = apply_plan(decision.plan, domains)
    assert list(after) == [H2]
    assert not plan_vm(inputs(vm, after, VirtualMachineStatus(host=H1))).plan


def test_maintenance_evacuates_and_a_label_mismatch_moves() -> None:
    domains = running_on(H1)
    vm = make_vm()
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1),
                              hosts=(host(H1, maintenance=True), host(H2))))
    assert [(a.name, getattr(a, "target_host", None)) for a in decision.plan] == [("MigrateDomain", H2)]
    assert "maintenance" in decision.plan.actions[0].reason
    vm = make_vm(placement={"hostSelector": {"zone": "b"}})
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1),
                              hosts=(host(H1, labels={"zone": "a"}), host(H2, labels={"zone": "b"}))))
    assert [a.name for a in decision.plan] == ["MigrateDomain"]


def test_capacity_never_triggers_a_move_and_silent_hosts_are_left_alone() -> None:
    domains = running_on(H1)
    vm = make_vm()
    full = host(H1, allocated_memory_bytes=16 << 30)
    assert not plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), hosts=(full, host(H2)))).plan
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1),
                              hosts=(host(H1, maintenance=True), host(H2, ready=False))))
    assert not decision.plan and decision.phase == "Running"
    conds = {c.type: c for c in decision.conditions}
    assert conds["Migration"].reason == "NoTarget" and "h2: not Ready" in conds["Migration"].message


def test_a_migration_libvirt_runs_without_us_is_watched_not_repeated() -> None:
    """After a controller restart a peer-to-peer migration goes on in libvirt with no record of ours: the
    planner must not start a second one (nor touch the VM) while the source reports it."""
    domains = running_on(H1)
    job = ObservedJob("unbounded", "migration_out", data_total=100, data_remaining=40, time_elapsed_ms=3200)
    domains = {H1: replace(domains[H1], job=job)}
    vm = make_vm(placement={"allowedHosts": [H2]}, memory={"size": "1Gi"})  # wants to move, and a live change
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1),
                              migration=MigrationContext(shared_storage=True, request=MigrationRequest("m1", H2))))
    assert not decision.plan and decision.phase == "Migrating" and decision.host == H1
    conds = {c.type: c for c in decision.conditions}
    assert conds["Migration"].reason == "Migrating" and "did not start" in conds["Migration"].message
    assert "for 3 s" in conds["Migration"].message and decision.requeue_after


def test_settings_come_from_the_policy_and_shared_storage() -> None:
    domains = running_on(H1)
    vm = make_vm()
    policy = MigrationPolicy(maxDowntimeMs=50, bandwidthMiBps=8, autoConverge=False, postCopy=True,
                             fallback="PostCopy", convergenceTimeoutSeconds=10)
    ctx = MigrationContext(policy=policy, request=MigrationRequest("m1", H2), shared_storage=False,
                           migrate_uris={H2: "tcp://10.0.0.2"},
                           libvirt_uris={H1: "qemu+tls://h1/system", H2: "qemu+tls://h2/system"})
    action = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=ctx)).plan.actions[0]
    assert isinstance(action, MigrateDomain) and action.migration == "m1"
    s = action.settings
    assert (s.max_downtime_ms, s.bandwidth_mib_s, s.auto_converge, s.post_copy, s.unsafe, s.migrate_uri) == (
        50, 8, False, True, False, "tcp://10.0.0.2")
    assert s.peer_uri == "qemu+tls://h2/system"  # peer to peer by default: the source dials the target

    relayed = replace(ctx, policy=policy.model_copy(update={"peerToPeer": False}))
    action = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=relayed)).plan.actions[0]
    assert isinstance(action, MigrateDomain) and action.settings.peer_uri is None


def test_request_to_a_host_that_cannot_take_it_is_rejected() -> None:
    domains = running_on(H1)
    vm = make_vm(placement={"allowedHosts": [H1]})
    ctx = MigrationContext(request=MigrationRequest("m1", H2))
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=ctx))
    assert not decision.plan and decision.move is not None and decision.move.outcome == "rejected"
    assert "h2 cannot take web: not in placement.allowedHosts" in decision.move.message
    ctx = MigrationContext(request=MigrationRequest("m2", H1))
    assert plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=ctx)).move.outcome == "satisfied"  # type: ignore[union-attr]


def test_request_without_target_lets_the_scheduler_choose() -> None:
    domains = running_on(H1)
    vm = make_vm()
    ctx = MigrationContext(request=MigrationRequest("m1"))
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=ctx,
                              hosts=(host(H1), host(H2, maintenance=True), host(H3))))
    assert [getattr(a, "target_host", None) for a in decision.plan] == [H3]


def test_concurrency_limit_holds_the_migration_back() -> None:
    domains = running_on(H1)
    vm = make_vm(placement={"allowedHosts": [H2]})
    ctx = MigrationContext(policy=MigrationPolicy(maxConcurrentPerHost=1), busy={H2: 1})
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=ctx))
    assert not decision.plan and decision.move is not None and decision.move.outcome == "waiting"
    assert "maxConcurrentPerHost 1" in decision.move.message and decision.requeue_after


def test_a_recent_failure_blocks_automatic_retries_but_not_requests() -> None:
    domains = running_on(H1)
    vm = make_vm(placement={"allowedHosts": [H2]})
    ctx = MigrationContext(retry_blocked="aborted: did not converge")
    assert not plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=ctx)).plan
    ctx = MigrationContext(retry_blocked="aborted", request=MigrationRequest("again", H2))
    assert plan_vm(inputs(vm, domains, VirtualMachineStatus(host=H1), migration=ctx)).plan


def test_in_flight_is_observed_then_takes_the_fallback_once() -> None:
    domains = running_on(H1)
    vm = make_vm(placement={"allowedHosts": [H2]})
    status = VirtualMachineStatus(host=H1)
    abort = MigrationPolicy(convergenceTimeoutSeconds=30)
    running = MigrationContext(policy=abort, in_flight=InFlight(H1, H2, elapsed_s=5))
    decision = plan_vm(inputs(vm, domains, status, migration=running))
    assert not decision.plan and decision.phase == "Migrating" and decision.requeue_after
    late = MigrationContext(policy=abort, in_flight=InFlight(H1, H2, elapsed_s=31))
    assert [type(a) for a in plan_vm(inputs(vm, domains, status, migration=late)).plan] == [AbortMigration]
    late = MigrationContext(policy=abort, in_flight=InFlight(H1, H2, elapsed_s=31, aborting=True))
    assert not plan_vm(inputs(vm, domains, status, migration=late)).plan
    post = MigrationPolicy(convergenceTimeoutSeconds=30, postCopy=True, fallback="PostCopy")
    late = MigrationContext(policy=post, in_flight=InFlight(H1, H2, elapsed_s=31))
    assert [type(a) for a in plan_vm(inputs(vm, domains, status, migration=late)).plan] == [StartPostCopy]


# --- property: whatever the placement and maintenance, executing the plan and re-planning is empty ---

placement = st.fixed_dictionaries({
    "allowed": st.lists(st.sampled_from([H1, H2, H3]), unique=True, max_size=3),
    "maintenance": st.lists(st.sampled_from([H1, H2, H3]), unique=True, max_size=2),
    "request": st.sampled_from([None, H1, H2, H3, "any"]),
})


@settings(max_examples=150, deadline=None)
@given(start=st.sampled_from([H1, H2]), change=placement)
def test_migration_execute_then_replan_is_empty(start: HostName, change: dict[str, Any]) -> None:
    domains = running_on(start)
    vm = make_vm(placement={"allowedHosts": change["allowed"]})
    hosts = tuple(host(h, maintenance=h in change["maintenance"]) for h in (H1, H2, H3))
    req = change["request"]
    ctx = MigrationContext(request=None if req is None else MigrationRequest("m", None if req == "any" else req))
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=start), hosts=hosts, migration=ctx))
    after = apply_plan(decision.plan, domains)
    assert len([d for d in after.values() if d.active]) == 1, "a VM never runs on two hosts"
    if decision.plan:
        moved_to = next(iter(after))
        assert moved_to not in change["maintenance"] and (not change["allowed"] or moved_to in change["allowed"])
    # The request is consumed (the Migration finished); the constraints alone must now be satisfied.
    replan = plan_vm(inputs(vm, after, VirtualMachineStatus(host=decision.host), hosts=hosts))
    consumed = decision.move is not None and decision.move.outcome in ("rejected", "satisfied")
    assert not replan.plan or consumed, (
        f"inconsistent result after apply: {[a.to_wire() for a in replan.plan]}")
