"""From a VirtualMachine spec to the libvirt DomainConfig we want, and how two configs differ. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from reconcilers.domain import (
    CorrelationId,
    DiskBus,
    DiskDevice,
    DiskSource,
    DomainConfig,
    DomainName,
    DomainType,
    DomainUUID,
    ImageFormat,
    KernelBoot,
    MacAddress,
    MachineType,
    NicDevice,
    NicSourceKind,
    ObservedDomain,
    OwnerMetadata,
    OwnerUID,
    SerialConsole,
)
from specs.vm import VirtualMachine, VirtualMachineStatus

CONSOLE_LOG_DIR = "/var/log/libvirt/qemu"
SPARE_ROOT_PORTS = 4  # free pcie-root-ports kept on q35 so disks and NICs can be hot-plugged
_PREFIX: dict[str, str] = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd", "usb": "sd"}


@dataclass(frozen=True)
class ResolvedDisk:
    """A Disk object as a VM uses it: where its image is and whether it exists yet."""

    name: str
    source: DiskSource
    format: ImageFormat
    shareable: bool
    ready: bool
    storage_domain: str | None = None


@dataclass(frozen=True)
class ResolvedNetwork:
    name: str
    source_kind: NicSourceKind
    source_name: str | None
    ready: bool
    virtualport: Literal["openvswitch"] | None = None
    vlan: int | None = None


def machine_type(text: str | None) -> MachineType:
    if text is None or text == "q35" or text.startswith("pc-q35"):
        return "q35"
    return "pc"


def _target_name(prefix: str, index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def _assign_targets(
    wanted: Sequence[tuple[DiskSource, DiskBus]], observed: tuple[DiskDevice, ...]
) -> list[str]:
    """Keep the target a disk already has (matched by source); give new disks the first free name."""
    by_source = {d.source: d.target for d in observed}
    taken = {by_source[src] for src, _ in wanted if src in by_source}
    targets = []
    for source, bus in wanted:
        if source in by_source:
            targets.append(by_source[source])
            continue
        prefix = _PREFIX[bus]
        n = 0
        while _target_name(prefix, n) in taken:
            n += 1
        name = _target_name(prefix, n)
        taken.add(name)
        targets.append(name)
    return targets


def _root_ports(disks: tuple[DiskDevice, ...], nics: int) -> int:
    """pcie-root-ports to render on q35: libvirt puts every PCIe device it places at define time (virtio
    disks, NICs, a virtio-scsi controller, the USB controller, the balloon) on a free existing port, so
    SPARE_ROOT_PORTS stay free for hot-plug only if we render one more per such device."""
    virtio = sum(1 for d in disks if d.bus == "virtio")
    scsi = 1 if any(d.bus == "scsi" for d in disks) else 0
    return SPARE_ROOT_PORTS + virtio + scsi + nics + 2


def generated_mac(uid: str, nic: str) -> MacAddress:
    """A stable locally administered MAC for a NIC without one: the same for the persistent config and a
    live attach, so both agree without a second round. Kept in status once in use."""
    digest = hashlib.sha256(f"{uid}/{nic}".encode()).digest()
    return MacAddress("52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3]))


def desired_domain(
    vm: VirtualMachine,
    status: VirtualMachineStatus | None,
    disks: Mapping[str, ResolvedDisk],
    networks: Mapping[str, ResolvedNetwork],
    domain_type: DomainType,
    observed: ObservedDomain | None,
) -> DomainConfig:
    """The config we want. Values libvirt generated earlier (UUID, MACs) come from status or observation."""
    spec = vm.spec
    seen_devices: tuple[DiskDevice, ...] = ()
    seen_nics: dict[str, NicDevice] = {}
    for config in (observed.live if observed else None, observed.config if observed else None):
        if config is not None:
            seen_devices += config.disks
            seen_nics.update({n.name: n for n in config.nics if n.name not in seen_nics})
    wanted = [(disks[a.disk].source, a.bus) for a in spec.disks]
    targets = _assign_targets(wanted, seen_devices)
    disk_devices = tuple(
        DiskDevice(
            target=target, source=disks[a.disk].source, bus=a.bus, format=disks[a.disk].format,
            boot_order=a.bootOrder, readonly=a.readOnly, shareable=disks[a.disk].shareable,
        )
        for a, target in zip(spec.disks, targets, strict=True)
    )
    status_macs = {n.name: n.mac for n in (status.nics if status else ())}
    nics = []
    for nic in spec.nics:
        net = networks[nic.network]
        seen = seen_nics.get(nic.name)
        mac = (nic.mac or status_macs.get(nic.name) or (seen.mac if seen else None)
               or generated_mac(vm.metadata.uid or vm.metadata.name, nic.name))
        nics.append(NicDevice(name=nic.name, source_kind=net.source_kind, source_name=net.source_name,
                              mac=MacAddress(mac.lower()), model=nic.model, virtualport=net.virtualport,
                              vlan=net.vlan))
    machine = machine_type(spec.machine)
    boot = spec.boot
    # The VM's uid is a UUID: use it for the domain too, unless libvirt already has another one.
    uuid = (status.uuid if status else None) or (observed.uuid if observed else None) or vm.metadata.uid
    return DomainConfig(
        name=DomainName(vm.metadata.name),
        uuid=DomainUUID(uuid) if uuid else None,
        vcpus=spec.cpu.cores,
        max_vcpus=spec.cpu.maxCores or spec.cpu.cores,
        memory_kib=spec.memory.size_bytes // 1024,
        max_memory_kib=spec.memory.max_size_bytes // 1024,
        domain_type=domain_type,
        machine=machine,
        cpu_model=spec.cpu.model,
        firmware=boot.firmware,
        kernel_boot=KernelBoot(boot.kernel, boot.initrd, boot.cmdline) if boot.kernel else None,
        disks=disk_devices,
        nics=tuple(nics),
        # The serial console is logged on the host (virsh console needs a pty; logs survive the guest).
        serial=SerialConsole(path=f"{CONSOLE_LOG_DIR}/{vm.metadata.name}.console.log"),
        spare_root_ports=_root_ports(disk_devices, len(nics)) if machine == "q35" else 0,
        owner=OwnerMetadata(
            uid=OwnerUID(vm.metadata.uid or ""), kind="VirtualMachine", name=vm.metadata.name,
            generation=vm.metadata.generation or 0,
            correlation_id=CorrelationId(vm.metadata.correlationId or ""),
        ),
    )


def _fill_generated(desired: DomainConfig, seen: DomainConfig) -> DomainConfig:
    """Where we left a value to libvirt (UUID, MAC), take libvirt's, so the comparison is fair."""
    seen_macs = {n.name: n.mac for n in seen.nics}
    nics = tuple(replace(n, mac=n.mac or seen_macs.get(n.name)) for n in desired.nics)
    return replace(desired, uuid=desired.uuid or seen.uuid, nics=nics)


def config_differences(desired: DomainConfig, seen: DomainConfig) -> tuple[str, ...]:
    """Human names of what differs between two configs. Not compared: the owner stamp, the serial console,
    and spare hot-plug root ports (a define-time reserve that each hot-plugged device uses up)."""
    desired = _fill_generated(desired, seen)
    diffs = []
    for field in ("uuid", "vcpus", "max_vcpus", "memory_kib", "max_memory_kib", "domain_type", "machine",
                  "cpu_model", "firmware", "kernel_boot"):
        if getattr(desired, field) != getattr(seen, field):
            diffs.append(field)
    if {d.target: d for d in desired.disks} != {d.target: d for d in seen.disks}:
        diffs.append("disks")
    if {n.name: n for n in desired.nics} != {n.name: n for n in seen.nics}:
        diffs.append("nics")
    return tuple(diffs)

