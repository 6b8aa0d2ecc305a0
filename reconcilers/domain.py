"""Typed libvirt domain model shared by the planners (``reconcilers/``) and the adapter (``controller/``).

Pure data: frozen dataclasses holding tuples, no I/O, no libvirt import. Two families, never mixed:

- ``*Config`` — what we want libvirt to hold (rendered to XML by ``controller.libvirt.codec``);
- ``Observed*`` — what libvirt reports (parsed by the same codec, collected by ``controller.libvirt``).

Values libvirt fills in when we leave them unset (a domain UUID, NIC MAC addresses, a NAT network's bridge
name) are ``None`` in a desired config; the observed config carries libvirt's value and the controller keeps
it in *status* (never in spec), so the next desired config can carry it and re-planning stays quiet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NewType

HostName = NewType("HostName", str)
DomainName = NewType("DomainName", str)
DomainUUID = NewType("DomainUUID", str)
OwnerUID = NewType("OwnerUID", str)
CorrelationId = NewType("CorrelationId", str)
PoolName = NewType("PoolName", str)
VolumeName = NewType("VolumeName", str)
NetworkName = NewType("NetworkName", str)
MacAddress = NewType("MacAddress", str)

DomainType = Literal["kvm", "qemu"]
MachineType = Literal["pc", "q35"]
Firmware = Literal["bios", "uefi"]
DiskBus = Literal["virtio", "scsi", "sata", "ide", "usb"]
ImageFormat = Literal["qcow2", "raw"]
NetworkDiskProtocol = Literal["nfs", "gluster", "iscsi"]
NicSourceKind = Literal["network", "bridge", "user"]
NicModel = Literal["virtio", "e1000", "e1000e", "rtl8139"]
ForwardMode = Literal["nat", "none", "bridge"]
DomainState = Literal[
    "running", "paused", "shutoff", "crashed", "pmsuspended", "blocked", "shutdown", "nostate"
]

# CPU model: the two modes by name, anything else is a named (custom) model such as "Skylake-Client".
CPU_HOST_MODEL = "host-model"
CPU_HOST_PASSTHROUGH = "host-passthrough"


@dataclass(frozen=True, slots=True)
class OwnerMetadata:
    """Our stamp inside ``<metadata>`` of every domain we manage; a domain without it is foreign."""

    uid: OwnerUID
    kind: str
    name: str
    generation: int
    correlation_id: CorrelationId


# ---------------------------------------------------------------- disks


@dataclass(frozen=True, slots=True)
class FileSource:
    """An image file, e.g. in a POSIX storage domain: ``<disk type='file'>``."""

    path: str


@dataclass(frozen=True, slots=True)
class BlockSource:
    """A host block device (direct LUN): ``<disk type='block'>``."""

    dev: str


@dataclass(frozen=True, slots=True)
class NetworkSource:
    """An image reached by QEMU's userspace client: ``<disk type='network'>``.

    ``name`` is the server's full path for nfs (``/export/dir/disk.qcow2``, leading slash), ``volume/path``
    for gluster and ``<iqn>/<lun>`` for iscsi. ``auth_username`` and ``auth_secret_usage`` are CHAP
    (``<auth username=...><secret type='iscsi' usage=...>``): the libvirt secret must exist on the host.
    """

    protocol: NetworkDiskProtocol
    host: str
    name: str
    port: int | None = None  # None = the protocol's default port
    auth_username: str | None = None
    auth_secret_usage: str | None = None

    def __post_init__(self) -> None:
        # libvirt writes gluster's default port into the XML; normalizing keeps equality meaningful.
        if self.port is not None and self.port == DEFAULT_PORTS.get(self.protocol):
            object.__setattr__(self, "port", None)


DEFAULT_PORTS: dict[str, int] = {"gluster": 24007}


DiskSource = FileSource | BlockSource | NetworkSource


@dataclass(frozen=True, slots=True)
class DiskDevice:
    target: str  # guest device name, e.g. "vda"
    source: DiskSource
    bus: DiskBus = "virtio"
    format: ImageFormat = "qcow2"
    boot_order: int | None = None
    readonly: bool = False
    shareable: bool = False
    serial: str | None = None


# ---------------------------------------------------------------- NICs


@dataclass(frozen=True, slots=True)
class NicDevice:
    """A network interface. ``name`` becomes the libvirt user alias ``ua-<name>``; ``mac`` None = let libvirt
    pick (then keep the observed one in status). ``source_name`` is the libvirt network or host bridge name,
    and None for ``user`` networking."""

    name: str
    source_kind: NicSourceKind
    source_name: str | None = None
    mac: MacAddress | None = None
    model: NicModel = "virtio"
    virtualport: Literal["openvswitch"] | None = None  # an Open vSwitch bridge port
    vlan: int | None = None  # 802.1Q tag of the port (``<vlan><tag id=...>``; Open vSwitch only)


@dataclass(frozen=True, slots=True)
class SerialConsole:
    """First serial port. ``path`` set = log the console to that file; None = a pty."""

    path: str | None = None


@dataclass(frozen=True, slots=True)
class KernelBoot:
    """Direct kernel boot."""

    kernel: str
    initrd: str | None = None
    cmdline: str | None = None


# ---------------------------------------------------------------- domain


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """What we want libvirt to hold for one domain.

    ``memory_kib`` is the current (balloon) size, ``max_memory_kib`` the boot-time size it may grow back to;
    ``vcpus`` is the number of online vCPUs, ``max_vcpus`` the hot-plug limit. ``spare_root_ports`` is the
    number of *unused* ``pcie-root-port`` controllers kept for hot-plug (q35 only; ignored on ``pc``):
    libvirt adds one port per PCI device by itself, so only the free ones are counted.
    Graphics are never rendered (headless).
    """

    name: DomainName
    uuid: DomainUUID | None
    vcpus: int
    max_vcpus: int
    memory_kib: int
    max_memory_kib: int
    domain_type: DomainType = "kvm"
    machine: MachineType = "q35"
    cpu_model: str | None = None
    firmware: Firmware = "bios"
    kernel_boot: KernelBoot | None = None
    disks: tuple[DiskDevice, ...] = ()
    nics: tuple[NicDevice, ...] = ()
    serial: SerialConsole | None = None
    spare_root_ports: int = 0
    owner: OwnerMetadata | None = None

    def __post_init__(self) -> None:
        if self.spare_root_ports and self.machine != "q35":
            raise ValueError("spare_root_ports (pcie-root-port hot-plug slots) needs machine 'q35'")
        if not 0 < self.vcpus <= self.max_vcpus:
            raise ValueError(f"vcpus must be in 1..max_vcpus ({self.max_vcpus}), got {self.vcpus}")
        if not 0 < self.memory_kib <= self.max_memory_kib:
            raise ValueError(
                f"memory_kib must be in 1..max_memory_kib ({self.max_memory_kib}), got {self.memory_kib}"
            )

    def disk(self, target: str) -> DiskDevice | None:
        return next((d for d in self.disks if d.target == target), None)

    def nic(self, name: str) -> NicDevice | None:
        return next((n for n in self.nics if n.name == name), None)


@dataclass(frozen=True, slots=True)
class ObservedJob:
    """A running libvirt job (migration, save, dump...), from ``virDomainGetJobStats``."""

    type: str  # "bounded" | "unbounded" | "none" | ...
    operation: str | None = None  # "outgoing_migration", ... when libvirt says
    data_processed: int | None = None
    data_remaining: int | None = None
    data_total: int | None = None
    time_elapsed_ms: int | None = None
    downtime_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ObservedDomain:
    """One domain as libvirt reports it on one host.

    ``config`` comes from the persistent (inactive) XML, ``live`` from the live XML when the domain is active.
    ``owner`` None means foreign: never touched unless imported. ``parse_error`` is set (and ``config`` and
    ``live`` None) when the XML holds something the model cannot represent — such a domain must not be
    modified; ``owner`` is still read then, so an owned one can be reported on its object's status.
    """

    host: HostName
    name: DomainName
    uuid: DomainUUID
    state: DomainState
    reason: str
    persistent: bool
    config: DomainConfig | None
    live: DomainConfig | None
    owner: OwnerMetadata | None
    job: ObservedJob | None = None
    parse_error: str | None = None

    @property
    def active(self) -> bool:
        """Running, paused, suspended... — anything with a live definition."""
        return self.live is not None


@dataclass(frozen=True, slots=True)
class ObservedHost:
    name: HostName
    uri: str
    ready: bool
    hostname: str | None = None
    libvirt_version: str | None = None  # "9.0.0"
    hypervisor_version: str | None = None  # QEMU version, "7.2.0"
    cpus: int | None = None
    memory_bytes: int | None = None
    free_memory_bytes: int | None = None
    host_uuid: str | None = None
    error: str | None = None


# ---------------------------------------------------------------- storage


@dataclass(frozen=True, slots=True)
class DirPoolConfig:
    """A libvirt ``dir`` pool over a directory (a POSIX storage domain as seen by one host)."""

    name: PoolName
    path: str


NetfsFormat = Literal["nfs", "glusterfs", "cifs"]


@dataclass(frozen=True, slots=True)
class NetfsPoolConfig:
    """A libvirt ``netfs`` pool: libvirtd mounts ``source_host:source_dir`` (an NFS export, a Gluster volume
    as ``/<volume>``, a CIFS share) at ``path`` on each host, in its own mount namespace, when the pool starts.

    ``nfs_version`` becomes ``<protocol ver=...>`` (nfs only); ``mount_options`` ``<fs:mount_opts>``.
    """

    name: PoolName
    path: str
    source_host: str
    source_dir: str
    format: NetfsFormat
    nfs_version: str | None = None
    mount_options: tuple[str, ...] = ()


# Every pool type a storage backend can ask for (reconcilers.storage.backends); grows with the backends.
PoolConfig = DirPoolConfig | NetfsPoolConfig


@dataclass(frozen=True, slots=True)
class NfsExport:
    """An NFS export the server reaches images on itself (libnfs), for domains without a pool."""

    server: str
    export: str
    version: str | None = None

    def url(self, image: str) -> str:
        """``nfs://server/export/image`` (libnfs and qemu-img syntax)."""
        return f"nfs://{self.server}{self.export.rstrip('/')}/{image}"


@dataclass(frozen=True, slots=True)
class ObservedPool:
    """A pool as libvirt reports it on one host (capacity and available are 0 while it is inactive)."""

    config: PoolConfig
    active: bool
    capacity_bytes: int
    available_bytes: int


@dataclass(frozen=True, slots=True)
class VolumeConfig:
    name: VolumeName
    capacity_bytes: int
    format: ImageFormat = "qcow2"
    backing_path: str | None = None
    backing_format: ImageFormat | None = None


@dataclass(frozen=True, slots=True)
class ObservedVolume:
    name: VolumeName
    path: str
    capacity_bytes: int
    allocation_bytes: int
    format: str  # what libvirt says; may be outside ImageFormat for foreign files
    backing_path: str | None = None
    backing_format: str | None = None


# ---------------------------------------------------------------- networks


@dataclass(frozen=True, slots=True)
class Ipv4Config:
    """``address`` is the host side in CIDR form, e.g. "192.168.100.1/24"; DHCP range optional."""

    address: str
    dhcp_start: str | None = None
    dhcp_end: str | None = None


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """A libvirt network. ``forward`` "none" = isolated; "bridge" uses an existing host ``bridge``.
    For nat/none a ``bridge`` of None lets libvirt pick one (virbrN)."""

    name: NetworkName
    forward: ForwardMode = "nat"
    bridge: str | None = None
    mtu: int | None = None
    ipv4: Ipv4Config | None = None


@dataclass(frozen=True, slots=True)
class ObservedNetwork:
    name: NetworkName
    uuid: str
    active: bool
    persistent: bool
    autostart: bool
    config: NetworkConfig
