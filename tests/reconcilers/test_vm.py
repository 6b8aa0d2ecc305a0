"""plan_vm: table-driven (desired, observed) -> actions, and the plan -> execute -> empty re-plan property."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcilers.domain import CpuFeature, FileSource, HostName, ObservedDomain
from reconcilers.plan import Impact
from reconcilers.scheduler import ClusterPolicy, HostView
from reconcilers.vm.domain import ResolvedDisk, ResolvedNetwork
from reconcilers.vm.plan import VmInputs, plan_vm
from specs.kinds import parse_resource
from specs.vm import VirtualMachine, VirtualMachineStatus
from tests.reconcilers.sim import apply_plan

H1, H2 = HostName("h1"), HostName("h2")
UID = "6b1f9f0e-8a4e-4c1e-9d2a-0a0b0c0d0e0f"


def make_vm(**spec: Any) -> VirtualMachine:
    body: dict[str, Any] = {"cluster": "c1", "cpu": {"cores": 1, "maxCores": 4},
                            "memory": {"size": "512Mi", "maxSize": "2Gi"}}
    body.update(spec)
    vm = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine",
                         "metadata": {"name": "web", "uid": UID, "generation": 1}, "spec": body})
    assert isinstance(vm, VirtualMachine)
    return vm


DISKS = {n: ResolvedDisk(n, FileSource(f"/srv/{n}.qcow2"), "qcow2", False, True, "shared") for n in ("d1", "d2", "d3")}
NETS = {n: ResolvedNetwork(n, "network", n, True) for n in ("lan", "dmz")}


def host(name: HostName, **kw: Any) -> HostView:
    base: dict[str, Any] = {"name": name, "cluster": "c1", "ready": True, "maintenance": False, "labels": {},
                            "cpus": 8, "memory_bytes": 16 << 30}
    base.update(kw)
    return HostView(**base)


def inputs(vm: VirtualMachine | None, domains: dict[HostName, ObservedDomain] | None = None,
           status: VirtualMachineStatus | None = None, hosts: tuple[HostView, ...] | None = None,
           **kw: Any) -> VmInputs:
    return VmInputs(name="web", vm=vm, status=status, disks=DISKS, networks=NETS,
                    hosts=hosts if hosts is not None else (host(H1), host(H2)), policy=ClusterPolicy(),
                    domains=domains or {}, **kw)


def converge(vm: VirtualMachine, domains: dict[HostName, ObservedDomain] | None = None,
             status: VirtualMachineStatus | None = None) -> dict[HostName, ObservedDomain]:
    domains = dict(domains or {})
    for _ in range(3):
        decision = plan_vm(inputs(vm, domains, status))
        if not decision.plan:
            return domains
        domains = apply_plan(decision.plan, domains)
        status = VirtualMachineStatus(host=decision.host)
    raise AssertionError(f"did not converge: {plan_vm(inputs(vm, domains, status)).plan}")


def names(decision: Any) -> list[str]:
    return [a.name for a in decision.plan]


def test_new_vm_is_defined_and_started_on_one_host() -> None:
    vm = make_vm(disks=[{"disk": "d1", "bootOrder": 1}], nics=[{"name": "eth0", "network": "lan"}])
    decision = plan_vm(inputs(vm))
    assert names(decision) == ["DefineDomain", "StartDomain"]
    assert decision.host in (H1, H2)
    config = decision.plan.actions[0].config  # type: ignore[attr-defined]
    assert config.uuid == UID and config.memory_kib == 512 * 1024 and config.max_memory_kib == 2048 * 1024
    assert config.disks[0].target == "vda" and config.nics[0].mac.startswith("52:54:00:")


def test_halted_vm_is_only_defined() -> None:
    assert names(plan_vm(inputs(make_vm(runStrategy="Halted")))) == ["DefineDomain"]


def test_converged_vm_plans_nothing() -> None:
    vm = make_vm(disks=[{"disk": "d1"}], nics=[{"name": "eth0", "network": "lan"}])
    domains = converge(vm)
    decision = plan_vm(inputs(vm, domains, VirtualMachineStatus(host=next(iter(domains)))))
    assert not decision.plan
    assert {c.type: c.status for c in decision.conditions}["Ready"] == "True"


@pytest.mark.parametrize(
    ("change", "expected", "impact"),
    [
        ({"disks": [{"disk": "d1"}, {"disk": "d2"}]}, ["DefineDomain", "AttachDisk"], Impact.LIVE),
        ({"disks": []}, ["DefineDomain", "DetachDisk"], Impact.LIVE),
        ({"nics": [{"name": "eth0", "network": "lan"}, {"name": "eth1", "network": "dmz"}]},
         ["DefineDomain", "AttachNic"], Impact.LIVE),
        ({"memory": {"size": "1Gi", "maxSize": "2Gi"}}, ["DefineDomain", "SetMemory"], Impact.LIVE),
        ({"cpu": {"cores": 2, "maxCores": 4}}, ["DefineDomain", "SetVcpus"], Impact.LIVE),
    ],
)
def test_live_changes_are_applied_live(change: dict[str, Any], expected: list[str], impact: Impact) -> None:
    vm = make_vm(disks=[{"disk": "d1"}], nics=[{"name": "eth0", "network": "lan"}])
    domains = converge(vm)
    changed = make_vm(**{"disks": [{"disk": "d1"}], "nics": [{"name": "eth0", "network": "lan"}], **change})
    decision = plan_vm(inputs(changed, domains, VirtualMachineStatus(host=next(iter(domains)))))
    assert names(decision) == expected
    assert decision.plan.impact == impact
    assert converge(changed, domains)  # and it converges with an empty re-plan


def test_expanded_cpu_in_the_live_xml_is_not_a_cold_change() -> None:
    """With no CPU model (or host-model), the running domain's XML lists the model and features QEMU
    expanded it to; a hot-plug must still be live, not wait for a reboot (found on lab hosts)."""
    vm = make_vm(disks=[{"disk": "d1"}])
    domains = converge(vm)
    h, d = next(iter(domains.items()))
    assert d.live is not None
    features = (CpuFeature("x2apic", "require"), CpuFeature("svm", "disable"))
    expanded = replace(d.live, cpu_model="qemu64", cpu_features=features)
    domains = {h: replace(d, live=expanded)}
    changed = make_vm(disks=[{"disk": "d1"}, {"disk": "d2"}])
    decision = plan_vm(inputs(changed, domains, VirtualMachineStatus(host=h)))
    assert names(decision) == ["DefineDomain", "AttachDisk"]
    assert decision.plan.impact == Impact.LIVE
    assert not any(c.type == "RestartRequired" for c in decision.conditions)


def test_cold_change_sets_restart_required_with_manual_policy() -> None:
    vm = make_vm()
    domains = converge(vm)
    changed = make_vm(memory={"size": "512Mi", "maxSize": "4Gi"})
    decision = plan_vm(inputs(changed, domains, VirtualMachineStatus(host=H1 if H1 in domains else H2)))
    assert names(decision) == ["DefineDomain"]
    assert decision.plan.impact == Impact.NEXT_BOOT
    conds = {c.type: c for c in decision.conditions}
    assert conds["RestartRequired"].status == "True" and "memory.maxSize" in conds["RestartRequired"].message
    # After the define, the plan is empty but the condition stays until a restart.
    domains = apply_plan(decision.plan, domains)
    again = plan_vm(inputs(changed, domains, VirtualMachineStatus(host=next(iter(domains)))))
    assert not again.plan and any(c.type == "RestartRequired" for c in again.conditions)


def test_cold_change_restarts_with_auto_policy() -> None:
    vm = make_vm(updatePolicy="Auto")
    domains = converge(vm)
    changed = make_vm(updatePolicy="Auto", memory={"size": "512Mi", "maxSize": "4Gi"})
    decision = plan_vm(inputs(changed, domains, VirtualMachineStatus(host=next(iter(domains)))))
    assert names(decision) == ["DefineDomain", "ShutdownDomain", "StartDomain"]
    assert decision.plan.impact == Impact.RESTART


def test_deleted_vm_is_shut_down_and_undefined() -> None:
    vm = make_vm()
    domains = converge(vm)
    gone = vm.model_copy(update={"metadata": vm.metadata.model_copy(update={"deletionTimestamp": datetime.now(UTC)})})
    decision = plan_vm(inputs(gone, domains))
    assert names(decision) == ["ShutdownDomain", "UndefineDomain"]
    assert not decision.finished_teardown
    assert plan_vm(inputs(gone, apply_plan(decision.plan, domains))).finished_teardown


def test_foreign_domain_with_the_same_name_is_never_touched() -> None:
    vm = make_vm()
    domains = converge(vm)
    h = next(iter(domains))
    foreign = {h: replace(domains[h], owner=None)}
    decision = plan_vm(inputs(vm, foreign, VirtualMachineStatus(host=h)))
    assert not decision.plan
    assert {c.type: c.reason for c in decision.conditions}["Ready"] == "NameConflict"


def test_unreachable_host_means_unknown_and_no_action() -> None:
    vm = make_vm()
    decision = plan_vm(inputs(vm, {}, VirtualMachineStatus(host=H1), unreachable=frozenset({H1})))
    assert not decision.plan and decision.phase == "Unknown"


def test_unschedulable_explains_every_host() -> None:
    vm = make_vm(placement={"hostSelector": {"gpu": "true"}})
    decision = plan_vm(inputs(vm))
    assert not decision.plan
    message = {c.type: c.message for c in decision.conditions}["Scheduled"]
    assert "h1: label gpu=true not present" in message and "h2:" in message


def test_anti_affinity_keeps_partners_apart() -> None:
    vm = make_vm(placement={"antiAffinityGroup": "db"})
    decision = plan_vm(inputs(vm, hosts=(host(H1, groups=frozenset({"db"})), host(H2))))
    assert decision.host == H2


# --- property: for generated specs and observed states, execute the plan and re-plan: empty ---

spec_strategy = st.fixed_dictionaries({
    "runStrategy": st.sampled_from(["Always", "Halted", "RerunOnFailure", "Manual"]),
    "updatePolicy": st.sampled_from(["Manual", "Auto"]),
    "cpu": st.integers(1, 4).map(lambda c: {"cores": c, "maxCores": 4}),
    "memory": st.sampled_from(["256Mi", "512Mi", "1Gi"]).map(lambda m: {"size": m, "maxSize": "2Gi"}),
    "disks": st.lists(st.sampled_from(["d1", "d2", "d3"]), unique=True, max_size=3).map(
        lambda ds: [{"disk": d} for d in ds]),
    "nics": st.lists(st.sampled_from(["eth0", "eth1"]), unique=True, max_size=2).map(
        lambda ns: [{"name": n, "network": "lan" if n == "eth0" else "dmz"} for n in ns]),
})


@settings(max_examples=150, deadline=None)
@given(first=spec_strategy, second=spec_strategy, running=st.booleans())
def test_execute_then_replan_is_empty(first: dict[str, Any], second: dict[str, Any], running: bool) -> None:
    domains: dict[HostName, ObservedDomain] = {}
    status = None
    vm = make_vm(**first)
    for _ in range(2):
        decision = plan_vm(inputs(vm, domains, status))
        domains = apply_plan(decision.plan, domains)
        status = VirtualMachineStatus(host=decision.host)
    if running and domains:
        h = next(iter(domains))
        if not domains[h].active:
            domains[h] = replace(domains[h], state="running", reason="booted", live=domains[h].config)
    vm2 = make_vm(**second)
    decision = plan_vm(inputs(vm2, domains, status))
    after = apply_plan(decision.plan, domains)
    replan = plan_vm(inputs(vm2, after, VirtualMachineStatus(host=decision.host)))
    assert not replan.plan, f"inconsistent result after apply: {[a.to_wire() for a in replan.plan]}"
