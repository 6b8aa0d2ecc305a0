"""Domain XML: render and parse ``<domain>`` and device XML for attach/detach."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import lru_cache
from typing import Literal

from controller.adapters.libvirt.codec._xml import (
    CPU_POLICIES,
    DISK_BUSES,
    DISK_CACHES,
    DISK_DEVICES,
    DISK_DISCARDS,
    DISK_IOS,
    DOMAIN_TYPES,
    IMAGE_FORMATS,
    NIC_KINDS,
    NIC_MODELS,
    PROTOCOLS,
    USER_ALIAS_PREFIX,
    CodecError,
    kib,
    literal,
    req_text,
    root,
    scaled_bytes,
    sub,
    text,
    to_string,
)
from controller.adapters.libvirt.codec.passthrough import canonical, is_implicit_device
from reconcilers.domain import (
    CPU_HOST_MODEL,
    CPU_HOST_PASSTHROUGH,
    BlockSource,
    CorrelationId,
    CpuFeature,
    CpuTopology,
    DiskDevice,
    DiskSource,
    DomainConfig,
    DomainName,
    DomainUUID,
    FileSource,
    KernelBoot,
    MacAddress,
    MachineType,
    MemoryHotplug,
    NetworkSource,
    NicDevice,
    NicSourceKind,
    OwnerMetadata,
    OwnerUID,
    SerialConsole,
)

METADATA_NS = "https://virtplane.io/xmlns/domain/v1"
METADATA_PREFIX = "vp"
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
    if config.memory_hotplug is not None:
        hotplug = config.memory_hotplug
        sub(dom, "maxMemory", str(hotplug.max_kib), unit="KiB", slots=str(hotplug.slots))
    sub(dom, "memory", str(config.max_memory_kib), unit="KiB")
    sub(dom, "currentMemory", str(config.memory_kib), unit="KiB")
    sub(dom, "vcpu", str(config.max_vcpus), current=str(config.vcpus))
    _render_os(dom, config)
    if config.features:
        features = sub(dom, "features")
        for feature in config.features:
            features.append(ET.fromstring(feature))
    _render_cpu(dom, config)
    for extra in config.extra_elements:
        dom.append(ET.fromstring(extra))
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
    for device in config.extra_devices:
        devices.append(ET.fromstring(device))
    return to_string(dom)


def render_owner(owner: OwnerMetadata) -> str:
    """Our ``<owner>`` element alone, for ``virDomainSetMetadata`` (stamping a domain without redefining it).
    Without a namespace: libvirt puts it in the one it is given (METADATA_NS, prefix METADATA_PREFIX)."""
    el = ET.Element("owner")
    for tag, value in (("uid", owner.uid), ("kind", owner.kind), ("name", owner.name),
                       ("generation", str(owner.generation)), ("correlationId", owner.correlation_id)):
        sub(el, tag, value)
    return ET.tostring(el, encoding="unicode")


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
    for dev in config.boot_devices:
        sub(os_el, "boot", dev=dev)


def _render_cpu(dom: ET.Element, config: DomainConfig) -> None:
    model = config.cpu_model
    if model is None and config.cpu_topology is None and not config.cpu_features:
        return
    if model in (CPU_HOST_MODEL, CPU_HOST_PASSTHROUGH):
        cpu = sub(dom, "cpu", mode=model)
    elif model is not None:
        cpu = sub(dom, "cpu", mode="custom", match="exact")
        sub(cpu, "model", model, fallback="forbid")
    else:
        cpu = sub(dom, "cpu")
    if config.cpu_topology is not None:
        t = config.cpu_topology
        sub(cpu, "topology", sockets=str(t.sockets), dies=str(t.dies), cores=str(t.cores), threads=str(t.threads))
    for feature in config.cpu_features:
        sub(cpu, "feature", policy=feature.policy, name=feature.name)


def _disk_element(disk: DiskDevice) -> ET.Element:
    src = disk.source
    kind: str = "network"
    if src is None or isinstance(src, FileSource):
        kind = "file"
    elif isinstance(src, BlockSource):
        kind = "block"
    el = ET.Element("disk", {"type": kind, "device": disk.device})
    driver = {"cache": disk.cache, "io": disk.io, "discard": disk.discard}
    sub(el, "driver", name="qemu", type=disk.format, **{k: v for k, v in driver.items() if v is not None})
    if src is None:
        pass  # an empty cdrom or floppy drive
    elif isinstance(src, FileSource):
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
    if nic.boot_order is not None:
        sub(el, "boot", order=str(nic.boot_order))
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


@lru_cache(maxsize=2048)
def _parse_domain_cached(xml: str) -> DomainConfig:
    # Pure and the result is frozen: caching by text makes a full listing of unchanged domains cheap. Kept
    # small: observation is event-driven, so a domain's XML is rarely parsed twice, and at 50,000 domains a
    # cache of 32,768 texts and configs held ~150 MiB that no listing ever hit (bench/RESULTS.md).
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
    machine = _parse_machine(os_el)
    serials = devices.findall("serial")
    first_serial = serials[0] if serials and serials[0].get("type") in ("pty", "file") else None
    cpu = dom.find("cpu")
    features = dom.find("features")
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
            cpu_model=_parse_cpu(cpu),
            firmware="uefi" if _is_uefi(os_el) else "bios",
            kernel_boot=_parse_kernel(os_el),
            disks=tuple(_parse_disk(d) for d in devices.iterfind("disk")),
            nics=tuple(_parse_nic(n, i) for i, n in enumerate(devices.iterfind("interface"))),
            serial=_parse_serial(first_serial),
            spare_root_ports=_spare_root_ports(devices) if machine == "q35" else 0,
            owner=_parse_owner(dom.find("metadata")),
            boot_devices=_boot_devices(os_el),
            cpu_topology=_parse_topology(cpu),
            cpu_features=_parse_cpu_features(cpu),
            memory_hotplug=_parse_hotplug(dom.find("maxMemory")),
            features=tuple(canonical(f) for f in features) if features is not None else (),
            extra_elements=_extra_elements(dom),
            extra_devices=tuple(
                canonical(d) for d in devices
                if d.tag not in _MODELLED_DEVICES and d is not first_serial and not is_implicit_device(d, first_serial)
            ),
        )
    except ValueError as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(str(exc)) from exc


_MODELLED_DEVICES = frozenset({"disk", "interface", "emulator"})
# Domain children the model reads field by field, or that libvirt writes for itself (run-time security
# labels and cgroup partition, a live domain's id).
_MODELLED_ELEMENTS = frozenset(
    {"name", "uuid", "metadata", "maxMemory", "memory", "currentMemory", "vcpu", "os", "features", "cpu",
     "devices", "resource", "seclabel"}
)
# libvirt's defaults: rendered by libvirt when absent, so a config need not carry them.
DEFAULT_ELEMENTS = frozenset(
    {'<clock offset="utc" />', "<on_poweroff>destroy</on_poweroff>", "<on_reboot>restart</on_reboot>",
     "<on_crash>destroy</on_crash>"}
)


def _extra_elements(dom: ET.Element) -> tuple[str, ...]:
    found = (canonical(el) for el in dom if el.tag not in _MODELLED_ELEMENTS)
    return tuple(x for x in found if x not in DEFAULT_ELEMENTS)


def _boot_devices(os_el: ET.Element) -> tuple[str, ...]:
    devs = tuple(b.get("dev", "") for b in os_el.iterfind("boot"))
    return () if devs == ("hd",) else devs  # libvirt writes <boot dev='hd'/> when nothing says otherwise


def _parse_topology(cpu: ET.Element | None) -> CpuTopology | None:
    topo = cpu.find("topology") if cpu is not None else None
    if topo is None:
        return None
    try:
        return CpuTopology(
            sockets=int(topo.get("sockets", "1")),
            dies=int(topo.get("dies", "1")),
            cores=int(topo.get("cores", "1")),
            threads=int(topo.get("threads", "1")),
        )
    except ValueError as exc:
        raise CodecError(f"<cpu><topology> has a non-integer count: {exc}") from exc


def _parse_cpu_features(cpu: ET.Element | None) -> tuple[CpuFeature, ...]:
    if cpu is None:
        return ()
    return tuple(
        CpuFeature(f.get("name", ""), literal(f.get("policy", "require"), CPU_POLICIES, "CPU feature policy"))
        for f in cpu.iterfind("feature")
    )


def _parse_hotplug(el: ET.Element | None) -> MemoryHotplug | None:
    if el is None:
        return None
    size = scaled_bytes(el, "KiB")
    if size is None or not el.get("slots", "").isdigit():
        raise CodecError("<maxMemory> needs a size and slots='N'")
    return MemoryHotplug(slots=int(el.get("slots", "0")), max_kib=size // 1024)


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
    device = literal(el.get("device", "disk"), DISK_DEVICES, "disk device")
    source = el.find("source")
    target = el.find("target")
    if target is None or not target.get("dev"):
        raise CodecError(f"disk without <target dev>: type {kind!r}")
    src: DiskSource | None
    empty = source is None or not any(source.get(a) for a in ("file", "dev", "name", "protocol"))
    if empty and device != "disk" and kind in ("file", "block"):
        src = None
    elif source is None:
        raise CodecError(f"disk {target.get('dev')} has no <source>")
    elif kind == "file" and source.get("file"):
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
    if driver is None:
        driver = ET.Element("driver")
    boot = el.find("boot")
    cache, io, discard = driver.get("cache"), driver.get("io"), driver.get("discard")
    return DiskDevice(
        target=target.get("dev", ""),
        source=src,
        bus=literal(target.get("bus"), DISK_BUSES, "disk bus"),
        format=literal(driver.get("type", "raw"), IMAGE_FORMATS, "format"),
        boot_order=int(boot.get("order", "0")) if boot is not None else None,
        readonly=el.find("readonly") is not None,
        shareable=el.find("shareable") is not None,
        serial=text(el.find("serial")),
        device=device,
        cache=literal(cache, DISK_CACHES, "disk cache") if cache is not None else None,
        discard=literal(discard, DISK_DISCARDS, "disk discard") if discard is not None else None,
        io=literal(io, DISK_IOS, "disk io") if io is not None else None,
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
    if not alias_name.startswith(USER_ALIAS_PREFIX):
        alias_name = ""  # a run-time alias (net0) of a live domain
    boot = el.find("boot")
    return NicDevice(
        name=alias_name.removeprefix(USER_ALIAS_PREFIX) if alias_name else f"net{index}",
        source_kind=kind,
        source_name=source_name,
        mac=MacAddress(mac.get("address", "")) if mac is not None else None,
        model=literal(model.get("type") if model is not None else None, NIC_MODELS, "NIC model"),
        virtualport=_virtualport(el.find("virtualport")),
        vlan=_vlan_tag(el.find("vlan")),
        boot_order=int(boot.get("order", "0")) if boot is not None else None,
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
