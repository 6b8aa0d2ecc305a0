"""From a VirtualMachine spec to the libvirt DomainConfig we want, and how two configs differ. Pure."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from reconcilers.domain import (
    DEFAULT_FEATURES,
    CorrelationId,
    CpuFeature,
    CpuTopology,
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
    MemoryHotplug,
    NicDevice,
    NicSourceKind,
    ObservedDomain,
    OwnerMetadata,
    OwnerUID,
    SerialConsole,
)
from specs.quantity import parse_quantity
from specs.vm import VirtualMachine, VirtualMachineStatus

CONSOLE_LOG_DIR = "/var/log/libvirt/qemu"
SPARE_ROOT_PORTS = 4  # free pcie-root-ports kept on q35 so disks and NICs can be hot-plugged
_PREFIX: dict[str, str] = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd", "usb": "sd", "fdc": "fd"}


@dataclass(frozen=True)
class ResolvedDisk:
    """A Disk object as a VM uses it: where its image is and whether it exists yet."""

    name: str
    source: DiskSource
    format: ImageFormat
    shareable: bool
    ready: bool
    storage_domain: str | None = None
    template: bool = False  # a template Disk: cloned, or attached read-only, never attached writable


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
    wanted: Sequence[tuple[DiskSource | None, DiskBus]], observed: tuple[DiskDevice, ...]
) -> list[str]:
    """Keep the target a disk already has (matched by source); give new disks the first free name.
    Empty drives (source None) take the targets of observed empty drives on their bus, in order."""
    by_key: dict[object, str] = {d.source: d.target for d in observed if d.source is not None}
    empties = [d for d in observed if d.source is None]
    keys: list[object] = []
    for index, (src, bus) in enumerate(wanted):
        if src is not None:
            keys.append(src)
            continue
        keys.append(("empty", index))
        same = next((d for d in empties if d.bus == bus), None)
        if same is not None:
            empties.remove(same)
            by_key[("empty", index)] = same.target
    taken = {by_key[key] for key in keys if key in by_key}
    targets = []
    for key, (_, bus) in zip(keys, wanted, strict=True):
        if key in by_key:
            targets.append(by_key[key])
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
    wanted: list[tuple[DiskSource | None, DiskBus]] = [(disks[a.disk].source, a.bus) for a in spec.disks]
    wanted += [(None, d.bus) for d in spec.emptyDrives]
    targets = _assign_targets(wanted, seen_devices)
    disk_devices = tuple(
        DiskDevice(
            target=target, source=disks[a.disk].source, bus=a.bus,
            format=disks[a.disk].format if a.device == "disk" else "raw",
            boot_order=a.bootOrder, readonly=a.readOnly or a.device == "cdrom", shareable=disks[a.disk].shareable,
            device=a.device, cache=a.cache, discard=a.discard, io=a.io,
        )
        for a, target in zip(spec.disks, targets[: len(spec.disks)], strict=True)
    ) + tuple(
        DiskDevice(target=target, source=None, bus=d.bus, format="raw", boot_order=d.bootOrder,
                   readonly=d.device == "cdrom", device=d.device)
        for d, target in zip(spec.emptyDrives, targets[len(spec.disks):], strict=True)
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
                              vlan=net.vlan, boot_order=nic.bootOrder))
    machine = machine_type(spec.machine)
    boot = spec.boot
    # The VM's uid is a UUID: use it for the domain too, unless libvirt already has another one.
    uuid = (status.uuid if status else None) or (observed.uuid if observed else None) or vm.metadata.uid
    return _with_modelled_extras(vm, DomainConfig(
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
    ))


def _with_modelled_extras(vm: VirtualMachine, config: DomainConfig) -> DomainConfig:
    """CPU topology and features, DIMM hot-plug, boot devices and the verbatim passthrough."""
    spec = vm.spec
    topo = spec.cpu.topology
    memory = spec.memory
    passthrough = spec.passthrough
    return replace(
        config,
        cpu_topology=CpuTopology(topo.sockets, topo.cores, topo.threads, topo.dies) if topo else None,
        cpu_features=tuple(CpuFeature(f.name, f.policy) for f in spec.cpu.features),
        memory_hotplug=MemoryHotplug(memory.dimmSlots, parse_quantity(memory.dimmMaxSize) // 1024)
        if memory.dimmSlots is not None and memory.dimmMaxSize is not None else None,
        boot_devices=spec.boot.devices,
        features=DEFAULT_FEATURES if passthrough.features is None else tuple(map(_canon, passthrough.features)),
        extra_elements=tuple(map(_canon, passthrough.elements)),
        extra_devices=tuple(map(_canon, passthrough.devices)),
    )


def _canon(text: str) -> str:
    """The codec's canonical text of a snippet the spec validated: attributes sorted, blank text dropped."""
    def strip(node: ET.Element) -> None:
        node.tail = None
        node.text = node.text.strip() or None if node.text is not None else None
        items = sorted(node.attrib.items())
        node.attrib.clear()
        node.attrib.update(items)
        for child in node:
            strip(child)

    el = ET.fromstring(text)
    strip(el)
    return ET.tostring(el, encoding="unicode", short_empty_elements=True)


def covers(wanted: str, seen: str) -> bool:
    """Whether libvirt's echo ``seen`` of a verbatim snippet holds everything ``wanted`` says (libvirt fills
    in defaults, e.g. a video model's vram, so equality would be drift forever)."""
    return _covers(ET.fromstring(wanted), ET.fromstring(seen))


def _covers(want: ET.Element, seen: ET.Element) -> bool:
    if want.tag != seen.tag or any(seen.get(k) != v for k, v in want.attrib.items()):
        return False
    if (want.text or "").strip() and (want.text or "").strip() != (seen.text or "").strip():
        return False
    pool = list(seen)
    for child in want:
        match = next((c for c in pool if _covers(child, c)), None)
        if match is None:
            return False
        pool.remove(match)
    return True


# Devices libvirt adds by itself next to some we ask for (a video card and an audio backend for graphics,
# the default USB controller of the machine type).
_ADDED_BY_LIBVIRT = ("<video", "<audio", "<controller")


def passthrough_matches(wanted: tuple[str, ...], seen: tuple[str, ...], devices: bool = False) -> bool:
    """Every wanted snippet is covered by its own seen one; the seen ones left over are ones libvirt adds."""
    pool = list(seen)
    for text in wanted:
        match = next((s for s in pool if covers(text, s)), None)
        if match is None:
            return False
        pool.remove(match)
    return all(devices and s.startswith(_ADDED_BY_LIBVIRT) for s in pool)


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
                  "cpu_model", "firmware", "kernel_boot", "boot_devices", "cpu_topology", "cpu_features",
                  "memory_hotplug"):
        if getattr(desired, field) != getattr(seen, field):
            diffs.append(field)
    for field in ("features", "extra_elements", "extra_devices"):
        if not passthrough_matches(getattr(desired, field), getattr(seen, field), field == "extra_devices"):
            diffs.append(field)
    if {d.target: d for d in desired.disks} != {d.target: d for d in seen.disks}:
        diffs.append("disks")
    if {n.name: n for n in desired.nics} != {n.name: n for n in seen.nics}:
        diffs.append("nics")
    return tuple(diffs)

