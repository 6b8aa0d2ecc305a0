"""Host health, fencing decisions, HA restart placement and what a VM does when its host was fenced. Pure."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from reconcilers.domain import HostName, ObservedHost
from reconcilers.host.actions import FenceHost, PowerOffHost, PowerOnHost
from reconcilers.host.health import FENCE_RETRY_S, HealthInputs, plan_health
from reconcilers.scheduler import ClusterPolicy, Request
from reconcilers.vm.ha import Displaced, plan_ha_restart
from reconcilers.vm.plan import plan_vm
from specs.host import Host, HostStatus, PowerAttempt, PowerOperation
from specs.kinds import parse_resource
from specs.meta import Condition
from specs.vm import VirtualMachineStatus
from tests.reconcilers.test_migration import running_on
from tests.reconcilers.test_vm import DISKS, H1, H2, host, inputs, make_vm

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def a_host(agent: str | None = "lab", maintenance: bool = False) -> Host:
    spec: dict[str, Any] = {"cluster": "c1", "uri": "qemu+unix:///system?socket=/l/h1/run/libvirt-sock",
                            "maintenance": maintenance}
    if agent is not None:
        spec["powerManagement"] = {"agent": agent}
    h = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "Host", "metadata": {"name": "h1"}, "spec": spec})
    assert isinstance(h, Host)
    return h


UP = ObservedHost(H1, "uri", True, libvirt_version="9.0.0")
DOWN = ObservedHost(H1, "uri", False, error="Cannot recv data: Connection reset by peer")


def health(observed: ObservedHost | None, *, previous: HostStatus | None = None, now: datetime = T0,
           last_answer: datetime | None = T0 - timedelta(seconds=5), grace: int = 10, fencing: bool = True,
           agent: str | None = "lab", **kw: Any) -> Any:
    return plan_health(HealthInputs(a_host(agent), observed, previous, now, last_answer, T0 - timedelta(hours=1),
                                    grace, fencing, **kw))


def test_answering_host_is_ready_and_nothing_is_planned() -> None:
    d = health(UP)
    assert d.phase == "Ready" and not d.plan and d.silent_since is None


def test_silent_within_the_grace_period_is_unreachable_and_nothing_is_done() -> None:
    d = health(DOWN, now=T0)  # first seen silent now; its last answer (5 s ago) does not shorten the grace
    assert d.phase == "Unreachable" and not d.plan and d.silent_since == T0
    assert "NotResponding after 10 s" in d.conditions[0].message and "Connection reset" in d.conditions[0].message


def test_an_answer_before_the_grace_ends_is_back_to_ready_with_no_action() -> None:
    silent = HostStatus(phase="Unreachable", silentSince=T0 - timedelta(seconds=5))
    d = health(UP, previous=silent)
    assert d.phase == "Ready" and not d.plan and d.silent_since is None


def test_past_the_grace_period_the_host_is_fenced_through_its_agent() -> None:
    silent = HostStatus(phase="Unreachable", silentSince=T0 - timedelta(seconds=5))
    assert health(DOWN, previous=silent, now=T0 + timedelta(seconds=4)).phase == "Unreachable"  # 9 s
    d = health(DOWN, previous=silent, now=T0 + timedelta(seconds=6))  # 11 s silent
    assert d.phase == "Fencing"
    assert [type(a) for a in d.plan] == [FenceHost] and d.plan.actions[0].agent == "lab"  # type: ignore[attr-defined]
    assert "no answer since" in d.plan.actions[0].reason


def test_disabled_fencing_or_no_agent_blocks_the_restart_and_says_why() -> None:
    silent = HostStatus(phase="Unreachable", silentSince=T0)
    off = health(DOWN, previous=silent, now=T0 + timedelta(seconds=60), fencing=False)
    assert off.phase == "NotResponding" and not off.plan and "ha.fencing: false" in (off.blocked or "")
    none = health(DOWN, previous=silent, now=T0 + timedelta(seconds=60), agent="none")
    assert none.phase == "NotResponding" and not none.plan and "no power management" in (none.blocked or "")


def test_a_failed_fence_is_retried_only_after_a_pause() -> None:
    failed = PowerOperation(operation="fence", started=T0, ok=False, state="unknown", durationSeconds=2.0,
                            attempts=(PowerAttempt(agent="lab", action="off", ok=False, state="unknown",
                                                   durationSeconds=2.0, message="boom", error="Failed"),))
    prev = HostStatus(phase="NotResponding", silentSince=T0 - timedelta(seconds=60), power=failed)
    soon = health(DOWN, previous=prev, now=T0 + timedelta(seconds=10))
    assert soon.phase == "NotResponding" and not soon.plan and "fencing through lab failed" in (soon.blocked or "")
    later = health(DOWN, previous=prev, now=T0 + timedelta(seconds=2 + FENCE_RETRY_S + 1))
    assert later.phase == "Fencing" and later.plan


def test_a_fenced_host_stays_fenced_until_it_answers_and_then_is_just_ready() -> None:
    fenced = HostStatus(phase="Fenced", silentSince=T0 - timedelta(minutes=5))
    assert health(DOWN, previous=fenced).phase == "Fenced"
    back = health(UP, previous=fenced)
    assert back.phase == "Ready" and not back.plan and "after being Fenced" in back.conditions[0].message


def test_a_host_never_seen_is_connecting_and_never_fenced() -> None:
    d = health(DOWN, last_answer=None, now=T0 + timedelta(hours=2))
    assert d.phase == "Connecting" and not d.plan


def test_after_a_controller_restart_silence_counts_from_when_it_was_first_seen_silent() -> None:
    ready = HostStatus(phase="Ready")  # written by the previous replica
    d = plan_health(HealthInputs(a_host(), DOWN, ready, T0, None, T0 - timedelta(seconds=30), 10, True))
    assert d.phase == "Unreachable" and d.silent_since == T0  # the grace period starts now
    noticed = HostStatus(phase="Unreachable", silentSince=T0 - timedelta(seconds=30))  # kept in status
    d = plan_health(HealthInputs(a_host(), DOWN, noticed, T0, None, T0 - timedelta(seconds=3), 10, True))
    assert d.phase == "Fencing"


def test_power_saving_powers_off_only_an_empty_host_and_on_again() -> None:
    busy = health(UP, power_request="off", vms=2)
    assert busy.phase == "Ready" and not busy.plan
    empty = health(UP, power_request="off", vms=0)
    assert empty.phase == "PoweringOff" and [type(a) for a in empty.plan] == [PowerOffHost]
    off = HostStatus(phase="PoweredOff", silentSince=T0 - timedelta(hours=1))
    quiet = health(DOWN, previous=off, now=T0 + timedelta(hours=1))
    assert quiet.phase == "PoweredOff" and not quiet.plan  # a host we powered off is never fenced
    wake = health(DOWN, previous=off, power_request="on")
    assert wake.phase == "PoweringOn" and [type(a) for a in wake.plan] == [PowerOnHost]


# ---------------------------------------------------------------- HA restart placement


def req(vm: str, mem_gib: int, cpus: int = 1, anti: str | None = None) -> Request:
    return Request(vm=vm, cluster="c1", cpus=cpus, memory_bytes=mem_gib << 30, anti_affinity_group=anti)


def test_ha_restart_places_higher_priority_first_within_capacity() -> None:
    hosts = (host(H2, memory_bytes=8 << 30), host(HostName("h3"), memory_bytes=4 << 30))
    displaced = [Displaced("low", 10, req("low", 4)), Displaced("high", 90, req("high", 8)),
                 Displaced("mid", 50, req("mid", 4))]
    out = {a.vm: a for a in plan_ha_restart(displaced, hosts, ClusterPolicy())}
    assert out["high"].host == H2  # first, and only h2 fits 8 GiB
    assert out["mid"].host == HostName("h3")
    assert out["low"].host is None and "memory" in out["low"].message  # nothing left for it


def test_ha_restart_respects_anti_affinity_between_the_restarted_vms() -> None:
    hosts = (host(H2), host(HostName("h3")))
    out = plan_ha_restart([Displaced("a", 50, req("a", 1, anti="db")), Displaced("b", 50, req("b", 1, anti="db"))],
                          hosts, ClusterPolicy())
    assert {a.host for a in out} == {H2, HostName("h3")}


def test_ha_restart_never_uses_a_host_that_is_not_ready() -> None:
    out = plan_ha_restart([Displaced("a", 50, req("a", 1))], (host(H2, ready=False),), ClusterPolicy())
    assert out[0].host is None and "not Ready" in out[0].message


# ---------------------------------------------------------------- a VM whose host was fenced


def on_h1(**kw: Any) -> VirtualMachineStatus:
    return VirtualMachineStatus(host=H1, phase="Unknown", observedGeneration=1, **kw)


def test_ha_vm_of_a_fenced_host_waits_for_its_placement_then_starts_there() -> None:
    vm = make_vm(highAvailability={"enabled": True, "priority": 80})
    hosts = (host(H1, ready=False), host(H2))
    waiting = plan_vm(inputs(vm, {}, on_h1(), hosts, unreachable=frozenset({H1}), fenced=frozenset({H1})))
    assert not waiting.plan and waiting.phase == "Pending" and waiting.host == H1
    placed = plan_vm(inputs(vm, {}, on_h1(), hosts, unreachable=frozenset({H1}), fenced=frozenset({H1}),
                            ha_target=H2))
    assert [a.name for a in placed.plan] == ["DefineDomain", "StartDomain"] and placed.host == H2
    assert {a.host for a in placed.plan} == {H2}  # type: ignore[attr-defined]


def test_ha_vm_of_a_silent_host_that_is_not_fenced_stays_unknown_and_says_why() -> None:
    vm = make_vm(highAvailability={"enabled": True})
    d = plan_vm(inputs(vm, {}, on_h1(), (host(H1, ready=False), host(H2)), unreachable=frozenset({H1}),
                       host_notes={H1: "NotResponding: fencing is disabled in cluster c1"}))
    assert not d.plan and d.phase == "Unknown" and d.host == H1
    assert "fencing is disabled" in next(c.message for c in d.conditions if c.type == "Ready")


def test_non_ha_vm_of_a_fenced_host_is_down_and_not_started_even_when_the_host_returns() -> None:
    vm = make_vm()
    down = plan_vm(inputs(vm, {}, on_h1(), (host(H1, ready=False), host(H2)), unreachable=frozenset({H1}),
                          fenced=frozenset({H1})))
    assert not down.plan and down.phase == "Stopped" and down.host == H1
    assert any(c.type == "Down" and c.reason == "HostFenced" for c in down.conditions)
    # The host powers on again: the old definition is there, shut off. It is not started.
    was_down = VirtualMachineStatus(host=H1, phase="Stopped", observedGeneration=1, conditions=down.conditions)
    defined = {H1: _shutoff(running_on(H1)[H1])}
    back = plan_vm(inputs(vm, defined, was_down, (host(H1), host(H2))))
    assert not back.plan and back.phase == "Stopped"
    # A spec change acknowledges it: it starts again.
    changed = vm.model_copy(update={"metadata": vm.metadata.model_copy(update={"generation": 2})})
    again = plan_vm(inputs(changed, defined, was_down, (host(H1), host(H2))))
    assert "StartDomain" in [a.name for a in again.plan]


def _shutoff(d: Any) -> Any:
    from dataclasses import replace

    return replace(d, state="shutoff", reason="destroyed", live=None)


def test_conditions_are_typed() -> None:
    assert Condition(type="Down", status="True", reason="HostFenced").reason == "HostFenced"


def test_a_vm_waiting_for_a_dependency_keeps_its_host_so_it_is_never_placed_twice() -> None:
    """Found by the fault-injection test: after a controller restart with the VM's host down, its disk read
    not-ready for a moment; the VM forgot its host, and was then placed anew while the host could still run it."""
    vm = make_vm(disks=[{"disk": "d1", "bootOrder": 1}], highAvailability={"enabled": True})
    not_ready = {"d1": DISKS["d1"].__class__(**{**DISKS["d1"].__dict__, "ready": False})}
    d = plan_vm(dataclasses.replace(inputs(vm, {}, on_h1(), (host(H1, ready=False), host(H2)),
                                           unreachable=frozenset({H1})), disks=not_ready))
    assert not d.plan and d.host == H1 and d.phase == "Pending"
    running = plan_vm(dataclasses.replace(inputs(vm, running_on(H1), on_h1()), disks=not_ready))
    assert not running.plan and running.host == H1 and running.phase == "Running"
    # Once the disk is back, the VM of the silent host stays Unknown (not placed elsewhere).
    back = plan_vm(inputs(vm, {}, on_h1(), (host(H1, ready=False), host(H2)), unreachable=frozenset({H1})))
    assert not back.plan and back.phase == "Unknown" and back.host == H1
