"""VM specs with cdroms, empty drives, boot orders, disk cache/discard/io, CPU topology and features, DIMM
hot-plug and verbatim passthrough become the DomainConfig the codec renders; libvirt's echo compares quiet."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from reconcilers.domain import CpuFeature, CpuTopology, DomainConfig, FileSource, MemoryHotplug
from reconcilers.vm.domain import ResolvedDisk, ResolvedNetwork, config_differences, covers, desired_domain
from specs.errors import error_message, error_path, format_path
from specs.kinds import parse_resource
from specs.vm import VirtualMachine

DISKS = {
    "root": ResolvedDisk("root", FileSource("/sd/root.qcow2"), "qcow2", False, True, "sd"),
    "iso": ResolvedDisk("iso", FileSource("/sd/iso.img"), "raw", False, True, "sd"),
}
NETS = {"lan": ResolvedNetwork("lan", "network", "lan", True)}


def _vm(**spec: Any) -> VirtualMachine:
    base: dict[str, Any] = {"cluster": "c", "cpu": {"cores": 2, "maxCores": 4}, "memory": {"size": "1Gi"}}
    base.update(spec)
    vm = parse_resource(
        {
            "apiVersion": "virtplane.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "uid": "0e3a3c55-54cb-4b39-9d1e-5b0f0d5a6a11"},
            "spec": base,
        }
    )
    assert isinstance(vm, VirtualMachine)
    return vm


FULL = {
    "cpu": {
        "cores": 2,
        "maxCores": 4,
        "model": "Skylake-Client",
        "topology": {"sockets": 1, "cores": 2, "threads": 2},
        "features": [{"name": "pcid"}, {"name": "hle", "policy": "disable"}],
    },
    "memory": {"size": "1Gi", "dimmSlots": 4, "dimmMaxSize": "8Gi"},
    "disks": [
        {"disk": "root", "cache": "none", "discard": "unmap", "io": "native", "bootOrder": 2},
        {"disk": "iso", "device": "cdrom", "bus": "sata", "bootOrder": 3},
    ],
    "emptyDrives": [{"device": "cdrom", "bus": "sata"}],
    "nics": [{"name": "eth0", "network": "lan", "bootOrder": 1}],
    "passthrough": {
        "devices": ["<graphics type='vnc' autoport='yes'/>", "<video><model type='vga'/></video>"],
        "features": ["<acpi/>", "<apic/>", "<vmport state='off'/>"],
        "elements": ["<clock offset='localtime'/>"],
    },
}


def test_every_new_field_reaches_the_domain_config() -> None:
    config = desired_domain(_vm(**FULL), None, DISKS, NETS, "kvm", None)
    root, iso, empty = config.disks
    assert (root.cache, root.discard, root.io, root.boot_order) == ("none", "unmap", "native", 2)
    assert (iso.device, iso.readonly, iso.format, iso.target, iso.boot_order) == ("cdrom", True, "raw", "sda", 3)
    assert (empty.device, empty.source, empty.target) == ("cdrom", None, "sdb")
    assert config.nics[0].boot_order == 1
    assert config.cpu_topology == CpuTopology(sockets=1, cores=2, threads=2)
    assert config.cpu_features == (CpuFeature("pcid", "require"), CpuFeature("hle", "disable"))
    assert config.memory_hotplug == MemoryHotplug(slots=4, max_kib=8 * 1024 * 1024)
    assert config.features == ("<acpi />", "<apic />", '<vmport state="off" />')
    assert config.extra_elements == ('<clock offset="localtime" />',)
    assert config.extra_devices == ('<graphics autoport="yes" type="vnc" />', '<video><model type="vga" /></video>')


def test_libvirts_filled_in_defaults_are_not_drift_but_a_changed_value_is() -> None:
    config = desired_domain(_vm(**FULL), None, DISKS, NETS, "kvm", None)
    echo = replace(
        config,
        extra_devices=(
            '<graphics autoport="yes" port="-1" type="vnc"><listen type="address" /></graphics>',
            '<video><model heads="1" primary="yes" type="vga" vram="16384" /></video>',
            '<audio id="1" type="none" />',
        ),
    )
    assert config_differences(config, echo) == ()
    changed = replace(echo, extra_devices=(echo.extra_devices[0], '<video><model type="qxl" /></video>'))
    assert config_differences(config, changed) == ("extra_devices",)
    hand_added = replace(echo, extra_devices=(*echo.extra_devices, '<watchdog action="reset" model="i6300esb" />'))
    assert config_differences(config, hand_added) == ("extra_devices",)
    assert not covers('<video><model type="vga" /></video>', "<video />")


def test_drives_keep_their_targets_when_observed() -> None:
    vm = _vm(**FULL)
    first = desired_domain(vm, None, DISKS, NETS, "kvm", None)
    assert [d.target for d in first.disks] == ["vda", "sda", "sdb"]
    seen = replace(
        first, disks=(first.disks[0], replace(first.disks[1], target="sdc"), replace(first.disks[2], target="sdd"))
    )
    from reconcilers.domain import ObservedDomain

    observed = ObservedDomain(
        host="h",
        name="vm1",
        uuid="u",
        state="running",
        reason="",
        persistent=True,  # type: ignore[arg-type]
        config=seen,
        live=seen,
        owner=None,
    )
    again = desired_domain(vm, None, DISKS, NETS, "kvm", observed)
    assert [d.target for d in again.disks] == ["vda", "sdc", "sdd"]


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ({"cpu": {"cores": 2, "topology": {"sockets": 2, "cores": 2}}}, "cpu.topology", "must be equal"),
        ({"cpu": {"cores": 1, "features": [{"name": "pcid"}]}}, "cpu.features", "need a cpu.model"),
        ({"disks": [{"disk": "iso", "device": "cdrom"}]}, "disks.0.bus", "sata, ide or scsi"),
        (
            {"nics": [{"name": "a", "network": "lan", "bootOrder": 1}], "emptyDrives": [{"bootOrder": 1}]},
            "nics.0.bootOrder",
            "used twice",
        ),
        (
            {"boot": {"devices": ["hd"]}, "nics": [{"name": "a", "network": "lan", "bootOrder": 1}]},
            "boot.devices",
            "do not go together",
        ),
        (
            {"passthrough": {"devices": ["<hostdev mode='subsystem' type='pci'/>"]}},
            "passthrough.devices.0",
            "not supported",
        ),
        (
            {"passthrough": {"devices": ["<serial type='file'><source path='/etc/shadow'/></serial>"]}},
            "passthrough.devices.0",
            "host file",
        ),
        (
            {"passthrough": {"devices": ["<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>"]}},
            "passthrough.devices.0",
            "/dev/urandom",
        ),
        ({"passthrough": {"elements": ["<iothreads>2</iothreads>"]}}, "passthrough.elements.0", "not supported"),
        ({"passthrough": {"devices": ["<video"]}}, "passthrough.devices.0", "well-formed"),
        ({"memory": {"size": "1Gi", "dimmSlots": 2}}, "memory.dimmSlots", "go together"),
    ],
)
def test_bad_device_specs_are_refused_with_the_field(spec: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        _vm(**spec)
    found = [(format_path(error_path(e)), error_message(e, VirtualMachine)) for e in info.value.errors()]
    want = "spec." + path.replace(".0", "[0]")
    assert any(p == want and words in m for p, m in found), found


def test_a_plain_vm_keeps_the_old_domain_shape() -> None:
    config = desired_domain(_vm(), None, {}, {}, "kvm", None)
    assert isinstance(config, DomainConfig)
    assert config.features == ("<acpi />", "<apic />")
    assert (config.extra_devices, config.extra_elements, config.cpu_topology, config.memory_hotplug) == (
        (),
        (),
        None,
        None,
    )
