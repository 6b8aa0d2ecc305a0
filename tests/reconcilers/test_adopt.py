"""Adoption, pure: a foreign domain -> the objects that reproduce it (or the reasons it cannot be adopted),
and the VM planner taking a running domain over with a metadata stamp only, never a redefine or restart."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from reconcilers.domain import (
    BlockSource,
    CorrelationId,
    CpuTopology,
    DiskDevice,
    DomainConfig,
    DomainName,
    DomainUUID,
    FileSource,
    HostName,
    MacAddress,
    NetworkSource,
    NicDevice,
    ObservedDomain,
    OwnerMetadata,
    OwnerUID,
)
from reconcilers.scheduler import ClusterPolicy, HostView
from reconcilers.vm.adopt import ADOPTED_FROM, ADOPTED_UUID, AdoptContext, plan_adoption
from reconcilers.vm.domain import ResolvedDisk, ResolvedNetwork
from reconcilers.vm.plan import VmInputs, plan_vm
from specs.disk import Disk
from specs.kinds import parse_resource
from specs.vm import VirtualMachine
from tests.reconcilers.sim import apply_plan

H1 = HostName("h1")
UUID = DomainUUID("5b8f3a9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
ROOT = "/srv/foreign/legacy-root.qcow2"
ISO = "/srv/foreign/installer.img"


def foreign_config(**changes: Any) -> DomainConfig:
    config = DomainConfig(
        name=DomainName("legacy"), uuid=UUID, vcpus=2, max_vcpus=4, memory_kib=1 << 20, max_memory_kib=2 << 20,
        machine="pc", cpu_model="host-model", cpu_topology=CpuTopology(sockets=1, cores=2, threads=2),
        disks=(
            DiskDevice("vda", FileSource(ROOT), "virtio", "qcow2", boot_order=2, cache="none", discard="unmap"),
            DiskDevice("hdc", FileSource(ISO), "ide", "raw", boot_order=3, readonly=True, device="cdrom"),
            DiskDevice("hdd", None, "ide", "raw", readonly=True, device="cdrom"),
        ),
        nics=(NicDevice("net0", "user", None, MacAddress("52:54:00:aa:bb:cc"), "e1000", boot_order=1),),
        extra_devices=('<graphics autoport="yes" type="vnc" />',),
    )
    return replace(config, **changes)


def observed(config: DomainConfig | None = None, **kw: Any) -> ObservedDomain:
    config = config or foreign_config()
    base: dict[str, Any] = {"host": H1, "name": config.name, "uuid": UUID, "state": "running", "reason": "booted",
                            "persistent": True, "config": config, "live": config, "owner": None}
    base.update(kw)
    return ObservedDomain(**base)


CTX = AdoptContext(H1, "main", "kvm", capacities={ROOT: 10 << 30, ISO: 300 << 20})


def by_kind(objects: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for o in objects:
        out.setdefault(o.kind, []).append(o)
    return out


def test_a_foreign_guest_becomes_a_vm_its_disks_a_storage_domain_and_a_network() -> None:
    adoption = plan_adoption(observed(), CTX)
    assert adoption.problems == ()
    objs = by_kind(adoption.objects)
    (vm,) = objs["VirtualMachine"]
    assert vm.metadata.annotations == {ADOPTED_FROM: "h1", ADOPTED_UUID: UUID}
    spec = vm.spec
    assert (spec.runStrategy, spec.machine, spec.cpu.cores, spec.cpu.maxCores) == ("Always", "pc", 2, 4)
    assert [(a.disk, a.device, a.bootOrder, a.cache) for a in spec.disks] == [
        ("legacy-root", "disk", 2, "none"), ("installer", "cdrom", 3, None)]
    assert [(d.device, d.bus) for d in spec.emptyDrives] == [("cdrom", "ide")]
    assert [(n.network, n.mac, n.model, n.bootOrder) for n in spec.nics] == [("user", "52:54:00:aa:bb:cc", "e1000", 1)]
    assert spec.passthrough.devices == ('<graphics autoport="yes" type="vnc" />',)
    disks = {d.metadata.name: d for d in objs["Disk"]}
    assert isinstance(disks["legacy-root"], Disk) and disks["legacy-root"].spec.size == "10Gi"
    assert disks["installer"].spec.format == "raw"
    (sd,) = objs["StorageDomain"]
    assert sd.spec.type == "local" and sd.spec.local.path == "/srv/foreign" and sd.spec.hosts == ("h1",)
    assert [n.spec.type for n in objs["Network"]] == ["user"]


def test_existing_storage_domains_and_networks_are_reused() -> None:
    ctx = replace(CTX, storage={"/srv/foreign": "shared"}, networks={("user", None): "lab-net"})
    objs = by_kind(plan_adoption(observed(), ctx).objects)
    assert "StorageDomain" not in objs and "Network" not in objs
    assert {d.spec.storageDomain for d in objs["Disk"]} == {"shared"}
    assert objs["VirtualMachine"][0].spec.nics[0].network == "lab-net"


def test_what_a_spec_cannot_say_is_listed_and_nothing_is_adopted() -> None:
    bad = foreign_config(
        disks=(DiskDevice("vda", FileSource("/srv/x/Disk One.qcow2"), "virtio", "qcow2"),
               DiskDevice("vdb", NetworkSource("nfs", "nas", "export/a.qcow2"), "virtio", "qcow2"),
               DiskDevice("vdc", BlockSource("/dev/sdz"), "virtio", "raw", serial="WD-1234")),
        nics=(NicDevice("net0", "network", "default", MacAddress("52:54:00:00:00:01"), "e1000e"),),
        domain_type="qemu",
    )
    adoption = plan_adoption(observed(bad), CTX, ("device <hostdev> is not supported",))
    assert adoption.objects == ()
    text = "\n".join(adoption.problems)
    for words in ("<hostdev>", "Disk One.qcow2", "network disks", "serial 'WD-1234'", "libvirt network 'default'",
                  "e1000e", "domain type qemu"):
        assert words in text, (words, text)


def test_owned_transient_or_clashing_domains_are_refused() -> None:
    owner = OwnerMetadata(OwnerUID("u"), "VirtualMachine", "other", 1, CorrelationId("c"))
    assert "already managed" in plan_adoption(observed(owner=owner), CTX).problems[0]
    assert any("transient" in p for p in plan_adoption(observed(persistent=False), CTX).problems)
    clash = replace(CTX, existing={"VirtualMachine": frozenset({"legacy"}), "Disk": frozenset({"installer"})})
    problems = plan_adoption(observed(), clash).problems
    assert any("VirtualMachine named legacy" in p for p in problems) and any("Disk named installer" in p
                                                                              for p in problems)
    unsized = replace(CTX, capacities={})
    assert any("size of" in p for p in plan_adoption(observed(), unsized).problems)


def _inputs(vm: VirtualMachine, domains: dict[HostName, ObservedDomain]) -> VmInputs:
    disks = {"legacy-root": ResolvedDisk("legacy-root", FileSource(ROOT), "qcow2", False, True, "sd"),
             "installer": ResolvedDisk("installer", FileSource(ISO), "raw", False, True, "sd")}
    nets = {"user": ResolvedNetwork("user", "user", None, True)}
    hosts = (HostView(name=H1, cluster="main", ready=True, maintenance=False, labels={}, cpus=8,
                      memory_bytes=16 << 30),)
    return VmInputs(name="legacy", vm=vm, status=None, disks=disks, networks=nets, hosts=hosts,
                    policy=ClusterPolicy(), domains=domains)


def _adopted_vm(**spec_changes: Any) -> VirtualMachine:
    (vm,) = by_kind(plan_adoption(observed(), CTX).objects)["VirtualMachine"]
    doc = vm.model_dump(mode="json", exclude_none=True)
    doc["metadata"] |= {"uid": "6b1f9f0e-8a4e-4c1e-9d2a-0a0b0c0d0e0f", "generation": 1}
    doc["spec"] |= spec_changes
    out = parse_resource(doc)
    assert isinstance(out, VirtualMachine)
    return out


def test_applied_adoption_stamps_the_running_domain_and_then_plans_nothing() -> None:
    vm = _adopted_vm()
    domains = {H1: observed()}
    decision = plan_vm(_inputs(vm, domains))
    assert [a.name for a in decision.plan] == ["StampOwner"], decision.conditions
    assert decision.host == H1
    stamp = decision.plan.actions[0]
    assert stamp.live and stamp.owner.uid == vm.metadata.uid  # type: ignore[attr-defined]
    after = apply_plan(decision.plan, domains)
    again = plan_vm(_inputs(vm, after))
    assert not again.plan, again.plan
    assert {c.type: c.status for c in again.conditions}["Ready"] == "True"


def test_an_adoption_spec_that_does_not_reproduce_the_domain_leaves_it_alone() -> None:
    vm = _adopted_vm(memory={"size": "2Gi"})
    decision = plan_vm(_inputs(vm, {H1: observed()}))
    assert not decision.plan
    ready = {c.type: c for c in decision.conditions}["Ready"]
    assert ready.reason == "AdoptionMismatch" and "memory.size" in ready.message


def test_without_the_adoption_annotations_a_foreign_domain_is_a_name_conflict() -> None:
    vm = _adopted_vm()
    plain = vm.model_copy(update={"metadata": vm.metadata.model_copy(update={"annotations": {}})})
    decision = plan_vm(_inputs(plain, {H1: observed()}))
    assert not decision.plan
    ready = {c.type: c for c in decision.conditions}["Ready"]
    assert ready.reason == "NameConflict" and "virtplane adopt host/h1 --domain legacy" in ready.message
    other_uuid = plan_vm(_inputs(vm, {H1: observed(uuid=DomainUUID("00000000-0000-4000-8000-000000000000"))}))
    assert {c.type: c.reason for c in other_uuid.conditions}["Ready"] == "WaitingForAdoptedDomain"


def test_an_adopting_vm_is_never_placed_anew_while_its_domain_is_not_seen() -> None:
    vm = _adopted_vm()
    decision = plan_vm(_inputs(vm, {}))
    assert not decision.plan and decision.host is None
    ready = {c.type: c for c in decision.conditions}["Ready"]
    assert ready.reason == "WaitingForAdoptedDomain" and ADOPTED_FROM in ready.message
