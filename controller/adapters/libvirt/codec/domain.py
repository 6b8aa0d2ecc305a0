"""Domain XML: render and parse ``<domain>`` and device XML for attach/detach."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import Literal

from controller.adapters.libvirt.codec._xml import (
    DISK_BUSES,
    DOMAIN_TYPES,
    IMAGE_FORMATS,
    NIC_KINDS,
    NIC_MODELS,
    PROTOCOLS,
    CodecError,
    kib,
    literal,
    req_text,
    root,
    sub,
    text,
    to_string,
)
from reconcilers.domain import (
    CPU_HOST_MODEL,
    CPU_HOST_PASSTHROUGH,
    BlockSource,
    CorrelationId,
    DiskDevice,
    DiskSource,
    DomainConfig,
    DomainName,
    DomainUUID,
    FileSource,
    KernelBoot,
    MacAddress,
    MachineType,
    NetworkSource,
    NicDevice,
    NicSourceKind,
    OwnerMetadata,
    OwnerUID,
    SerialConsole,
)

METADATA_NS = "https://virtplane.io/xmlns/domain/v1"
METADATA_PREFIX = "vp"
USER_ALIAS_PREFIX = "ua-"
ET.register_namespace(METADATA_PREFIX, METADATA_NS)

# ================================================================= domain: render


def render_domain(config: DomainConfig) -> str:
    """Render the persistent domain XML for ``conn.defineXML``."""
    dom = ET.Element("domain", {"type": config.domain_type})
    sub(dom, "name", config.name)
    if config.uuid is not None:
        sub(dom, "uuid", config.uuid)
    if config.owner is not None:
        _render_owner(sub(dom, "metadata"), config.owner)
    sub(dom, "memory", str(config.max_memory_kib), unit="KiB")
    sub(dom, "currentMemory", str(config.memory_kib), unit="KiB")
    sub(dom, "vcpu", str(config.max_vcpus), current=str(config.vcpus))
    _render_os(dom, config)
    features = sub(dom, "features")
    sub(features, "acpi")
    sub(features, "apic")
    _render_cpu(dom, config.cpu_model)
    devices = sub(dom, "devices")
    for disk in config.disks:
        devices.append(_disk_element(disk))
    if config.machine == "q35":
        sub(devices, "controller", type="pci", model="pcie-root")
        for _ in range(config.spare_root_ports):
            sub(devices, "controller", type="pci", model="pcie-root-port")
    for nic in config.nics:
        devices.append(_nic_element(nic))
    if config.serial is not None:
        if config.serial.path is None:
            sub(devices, "serial", type="pty")
        else:
            serial = sub(devices, "serial", type="file")
            # append: a migration's destination QEMU opens the same log and must not truncate it.
            sub(serial, "source", path=config.serial.path, append="on")
    return to_string(dom)


def _render_owner(metadata: ET.Element, owner: OwnerMetadata) -> None:
    el = sub(metadata, f"{{{METADATA_NS}}}owner")
    sub(el, f"{{{METADATA_NS}}}uid", owner.uid)
    sub(el, f"{{{METADATA_NS}}}kind", owner.kind)
    sub(el, f"{{{METADATA_NS}}}name", owner.name)
    sub(el, f"{{{METADATA_NS}}}generation", str(owner.generation))
    sub(el, f"{{{METADATA_NS}}}correlationId", owner.correlation_id)


def _render_os(dom: ET.Element, config: DomainConfig) -> None:
    os_el = sub(dom, "os", **({"firmware": "efi"} if config.firmware == "uefi" else {}))
    sub(os_el, "type", "hvm", arch="x86_64", machine=config.machine)
    if config.kernel_boot is not None:
        sub(os_el, "kernel", config.kernel_boot.kernel)
        if config.kernel_boot.initrd is not None:
            sub(os_el, "initrd", config.kernel_boot.initrd)
        if config.kernel_boot.cmdline is not None:
            sub(os_el, "cmdline", config.kernel_boot.cmdline)


def _render_cpu(dom: ET.Element, model: str | None) -> None:
    if model is None:
        return
    if model in (CPU_HOST_MODEL, CPU_HOST_PASSTHROUGH):
        sub(dom, "cpu", mode=model)
    else:
        cpu = sub(dom, "cpu", mode="custom", match="exact")
        sub(cpu, "model", model, fallback="forbid")


def _disk_element(disk: DiskDevice) -> ET.Element:
    src = disk.source
    kind: str = "network"
    if isinstance(src, FileSource):
        kind = "file"
    elif isinstance(src, BlockSource):
        kind = "block"
    el = ET.Element("disk", {"type": kind, "device": "disk"})
    sub(el, "driver", name="qemu", type=disk.format)
    if isinstance(src, FileSource):
        sub(el, "source", file=src.path)
    elif isinstance(src, BlockSource):
        sub(el, "source", dev=src.dev)
    else:
        source = sub(el, "source", protocol=src.protocol, name=src.name)
        host_attrs = {"name": src.host} | ({"port": str(src.port)} if src.port is not None else {})
        sub(source, "host", **host_attrs)
        if src.auth_username is not None:
            auth = sub(source, "auth", username=src.auth_username)
            sub(auth, "secret", type="iscsi", usage=src.auth_secret_usage or "")
    sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.readonly:
        sub(el, "readonly")
    if disk.shareable:
        sub(el, "shareable")
    if disk.serial is not None:
        sub(el, "serial", disk.serial)
    if disk.boot_order is not None:
        sub(el, "boot", order=str(disk.boot_order))
    return el


def _nic_element(nic: NicDevice) -> ET.Element:
    el = ET.Element("interface", {"type": nic.source_kind})
    if nic.mac is not None:
        sub(el, "mac", address=nic.mac)
    if nic.source_kind == "network":
        sub(el, "source", network=nic.source_name or "")
    elif nic.source_kind == "bridge":
        sub(el, "source", bridge=nic.source_name or "")
    if nic.virtualport is not None:
        sub(el, "virtualport", type=nic.virtualport)
    if nic.vlan is not None:
        sub(sub(el, "vlan"), "tag", id=str(nic.vlan))
    sub(el, "model", type=nic.model)
    sub(el, "alias", name=USER_ALIAS_PREFIX + nic.name)
    return el


def render_disk_device(disk: DiskDevice) -> str:
    """Device XML for ``attachDeviceFlags`` / ``detachDeviceFlags``."""
    return to_string(_disk_element(disk))


def render_nic_device(nic: NicDevice) -> str:
    """Device XML for ``attachDeviceFlags`` / ``detachDeviceFlags``."""
    return to_string(_nic_element(nic))


# ================================================================= domain: parse


def parse_domain(xml: str) -> tuple[DomainConfig, OwnerMetadata | None]:
    """Parse a domain XML (inactive or live) into the model; results are cached by XML text.

    Returns ``(config, owner)``; ``owner`` is also ``config.owner`` (None for a foreign domain).
    """
    config = _parse_domain_cached(xml)
    return config, config.owner


def parse_owner(xml: str) -> OwnerMetadata | None:
    """Only our owner stamp — for a domain whose XML ``parse_domain`` cannot represent."""
    return _parse_owner(root(xml, "domain").find("metadata"))


@lru_cache(maxsize=32768)
def _parse_domain_cached(xml: str) -> DomainConfig:
    # Pure and the result is frozen: caching by text makes a periodic resync of unchanged domains cheap.
    dom = root(xml, "domain")
    uuid = text(dom.find("uuid"))
    os_el = dom.find("os")
    if os_el is None:
        raise CodecError("<os> is missing")
    vcpu = dom.find("vcpu")
    max_vcpus = int(req_text(dom, "vcpu"))
    max_memory_kib = kib(dom.find("memory"), "memory")
    current = dom.find("currentMemory")
    devices = dom.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    disks = [d for d in devices.iterfind("disk") if d.get("device", "disk") == "disk"]  # not cdrom/floppy
    machine = _parse_machine(os_el)
    try:
        return DomainConfig(
            name=DomainName(req_text(dom, "name")),
            uuid=DomainUUID(uuid) if uuid else None,
            vcpus=int(vcpu.get("current", max_vcpus)) if vcpu is not None else max_vcpus,
            max_vcpus=max_vcpus,
            memory_kib=kib(current, "currentMemory") if current is not None else max_memory_kib,
            max_memory_kib=max_memory_kib,
            domain_type=literal(dom.get("type"), DOMAIN_TYPES, "domain type"),
            machine=machine,
            cpu_model=_parse_cpu(dom.find("cpu")),
            firmware="uefi" if _is_uefi(os_el) else "bios",
            kernel_boot=_parse_kernel(os_el),
            disks=tuple(_parse_disk(d) for d in disks),
            nics=tuple(_parse_nic(n, i) for i, n in enumerate(devices.iterfind("interface"))),
            serial=_parse_serial(devices.find("serial")),
            spare_root_ports=_spare_root_ports(devices) if machine == "q35" else 0,
            owner=_parse_owner(dom.find("metadata")),
        )
    except ValueError as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(str(exc)) from exc


def _parse_machine(os_el: ET.Element) -> MachineType:
    type_el = os_el.find("type")
    machine = type_el.get("machine") if type_el is not None else None
    if machine is None:
        raise CodecError("<os><type machine=...> is missing")
    if machine == "pc" or machine.startswith("pc-i440fx-"):
        return "pc"
    if machine == "q35" or machine.startswith("pc-q35-"):
        return "q35"
    raise CodecError(f"machine type {machine!r} is not supported (expected pc or q35)")


def _is_uefi(os_el: ET.Element) -> bool:
    if os_el.get("firmware") == "efi":
        return True
    loader = os_el.find("loader")
    return loader is not None and loader.get("type") == "pflash"


def _parse_kernel(os_el: ET.Element) -> KernelBoot | None:
    kernel = text(os_el.find("kernel"))
    if not kernel:
        return None
    return KernelBoot(kernel=kernel, initrd=text(os_el.find("initrd")), cmdline=text(os_el.find("cmdline")))


def _parse_cpu(cpu: ET.Element | None) -> str | None:
    if cpu is None:
        return None
    mode = cpu.get("mode", "custom")
    if mode in (CPU_HOST_MODEL, CPU_HOST_PASSTHROUGH):
        return mode
    if mode == "custom":
        return text(cpu.find("model"))
    raise CodecError(f"CPU mode {mode!r} is not supported")


def _parse_disk(el: ET.Element) -> DiskDevice:
    kind = el.get("type")
    source = el.find("source")
    target = el.find("target")
    if source is None or target is None or not target.get("dev"):
        raise CodecError(f"disk without <source> or <target dev>: type {kind!r}")
    src: DiskSource
    if kind == "file" and source.get("file"):
        src = FileSource(path=source.get("file", ""))
    elif kind == "block" and source.get("dev"):
        src = BlockSource(dev=source.get("dev", ""))
    elif kind == "network":
        host = source.find("host")
        if host is None or not host.get("name") or not source.get("name"):
            raise CodecError("network disk without <source name> and <host name>")
        port = host.get("port")
        src = NetworkSource(
            protocol=literal(source.get("protocol"), PROTOCOLS, "disk protocol"),
            host=host.get("name", ""),
            name=source.get("name", ""),
            port=int(port) if port else None,
            auth_username=auth.get("username") if (auth := source.find("auth")) is not None else None,
            auth_secret_usage=_secret_usage(auth),
        )
    else:
        raise CodecError(f"disk type {kind!r} is not supported")
    driver = el.find("driver")
    boot = el.find("boot")
    return DiskDevice(
        target=target.get("dev", ""),
        source=src,
        bus=literal(target.get("bus"), DISK_BUSES, "disk bus"),
        format=literal("raw" if driver is None else driver.get("type", "raw"), IMAGE_FORMATS, "format"),
        boot_order=int(boot.get("order", "0")) if boot is not None else None,
        readonly=el.find("readonly") is not None,
        shareable=el.find("shareable") is not None,
        serial=text(el.find("serial")),
    )


def _secret_usage(auth: ET.Element | None) -> str | None:
    secret = auth.find("secret") if auth is not None else None
    if secret is None:
        return None
    if not secret.get("usage"):
        raise CodecError("disk <auth> names its secret by uuid; only usage names are supported")
    return secret.get("usage")


def _parse_nic(el: ET.Element, index: int) -> NicDevice:
    kind: NicSourceKind = literal(el.get("type"), NIC_KINDS, "interface type")
    source = el.find("source")
    source_name = None
    if source is not None and kind != "user":
        source_name = source.get(kind)
    mac = el.find("mac")
    model = el.find("model")
    alias = el.find("alias")
    alias_name = alias.get("name", "") if alias is not None else ""
    return NicDevice(
        name=alias_name.removeprefix(USER_ALIAS_PREFIX) if alias_name else f"net{index}",
        source_kind=kind,
        source_name=source_name,
        mac=MacAddress(mac.get("address", "")) if mac is not None else None,
        model=literal(model.get("type") if model is not None else None, NIC_MODELS, "NIC model"),
        virtualport=_virtualport(el.find("virtualport")),
        vlan=_vlan_tag(el.find("vlan")),
    )


def _virtualport(el: ET.Element | None) -> Literal["openvswitch"] | None:
    if el is None:
        return None
    if el.get("type") != "openvswitch":
        raise CodecError(f"interface virtualport type {el.get('type')!r} is not supported (expected openvswitch)")
    return "openvswitch"


def _vlan_tag(el: ET.Element | None) -> int | None:
    tags = el.findall("tag") if el is not None else []
    if not tags:
        return None
    if len(tags) > 1 or (el is not None and el.get("trunk") == "yes"):
        raise CodecError("VLAN trunks (several <tag>) are not supported")
    return int(tags[0].get("id", "0"))


def _parse_serial(el: ET.Element | None) -> SerialConsole | None:
    if el is None:
        return None
    kind = el.get("type")
    if kind == "pty":
        return SerialConsole(path=None)
    source = el.find("source")
    if kind == "file" and source is not None and source.get("path"):
        return SerialConsole(path=source.get("path"))
    raise CodecError(f"serial type {kind!r} is not supported")


def _spare_root_ports(devices: ET.Element) -> int:
    ports = {
        int(c.get("index", "-1"), 0)
        for c in devices.iterfind("controller")
        if c.get("type") == "pci" and c.get("model") == "pcie-root-port"
    }
    if -1 in ports:  # rendered by us, not yet indexed by libvirt
        return sum(
            1
            for c in devices.iterfind("controller")
            if c.get("type") == "pci" and c.get("model") == "pcie-root-port"
        )
    used = {int(a.get("bus", "0"), 0) for a in devices.iterfind("*/address") if a.get("type") == "pci"}
    return len(ports - used)


def _parse_owner(metadata: ET.Element | None) -> OwnerMetadata | None:
    if metadata is None:
        return None
    owner = metadata.find(f"{{{METADATA_NS}}}owner")
    if owner is None:
        return None

    def field(name: str) -> str:
        return text(owner.find(f"{{{METADATA_NS}}}{name}")) or ""

    try:
        generation = int(field("generation") or "0")
    except ValueError as exc:
        raise CodecError(f"owner metadata generation is not an integer: {exc}") from exc
    return OwnerMetadata(
        uid=OwnerUID(field("uid")),
        kind=field("kind"),
        name=field("name"),
        generation=generation,
        correlation_id=CorrelationId(field("correlationId")),
    )
