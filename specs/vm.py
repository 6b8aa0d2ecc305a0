"""VirtualMachine: the desired definition and run state of one guest.

Chosen host, generated MACs and UUID live in VirtualMachineStatus, never in the spec.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, Field, model_validator

from specs.errors import field_error
from specs.meta import Labels, Name, Resource, StatusBase, StrictModel
from specs.passthrough import device_refusal, element_refusal, feature_refusal, parse_snippet
from specs.quantity import Quantity, parse_quantity

_M = TypeVar("_M")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
MIN_MEMORY = 1 << 20


def check_mac(value: str) -> str:
    """A unicast MAC address written aa:bb:cc:dd:ee:ff."""
    if not _MAC.match(value):
        raise ValueError(f"expected a MAC address like 52:54:00:12:34:56, got {value!r}")
    if int(value[:2], 16) & 1:
        raise ValueError(
            f"{value} is a multicast MAC address (the first octet must be even), e.g. 52:54:00:..."
        )
    if value.lower() == "00:00:00:00:00:00":
        raise ValueError("00:00:00:00:00:00 is not a usable MAC address")
    return value


MacAddress = Annotated[str, AfterValidator(check_mac)]


class CpuTopologySpec(StrictModel):
    """How the vCPUs look to the guest; sockets x dies x cores x threads must equal maxCores (or cores)."""

    sockets: int = Field(default=1, ge=1, le=512, description="CPU sockets.")
    dies: int = Field(default=1, ge=1, le=512, description="Dies per socket.")
    cores: int = Field(default=1, ge=1, le=512, description="Cores per die.")
    threads: int = Field(default=1, ge=1, le=512, description="Threads per core.")


class CpuFeatureSpec(StrictModel):
    """A CPU feature flag asked for or refused."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", description="Feature name as QEMU spells it, e.g. pcid.")
    policy: Literal["force", "require", "optional", "disable", "forbid"] = Field(
        default="require", description="require (default), force, optional, disable or forbid."
    )


class CpuSpec(StrictModel):
    """Virtual CPUs."""

    cores: int = Field(ge=1, le=512, description="vCPUs at boot.")
    maxCores: int | None = Field(
        default=None, ge=1, le=512, description="Upper bound for vCPU hot-plug (>= cores); default: cores."
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        description="CPU model: host-passthrough, host-model, or a named model such as Skylake-Server; "
        "default: the cluster's common model (keeps VMs migratable).",
    )

    topology: CpuTopologySpec | None = Field(
        default=None, description="Sockets/dies/cores/threads seen by the guest; default: one socket per vCPU."
    )
    features: tuple[CpuFeatureSpec, ...] = Field(default=(), description="CPU feature flags (names unique).")

    @property
    def max_cores(self) -> int:
        """Effective hot-plug limit: maxCores, else cores."""
        return self.maxCores if self.maxCores is not None else self.cores

    @model_validator(mode="after")
    def _max(self) -> CpuSpec:
        if self.maxCores is not None and self.maxCores < self.cores:
            raise field_error("maxCores", f"maxCores ({self.maxCores}) must be >= cores ({self.cores})")
        t = self.topology
        if t is not None and t.sockets * t.dies * t.cores * t.threads != self.max_cores:
            raise field_error(
                "topology",
                f"sockets x dies x cores x threads = {t.sockets * t.dies * t.cores * t.threads}, but the VM has "
                f"{self.max_cores} vCPUs at most (maxCores, else cores); they must be equal",
            )
        if self.features and self.model is None:
            raise field_error("features", "CPU features need a cpu.model (libvirt refuses them without one)")
        names = [f.name for f in self.features]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise field_error(f"features.{index}.name", f"CPU feature {name!r} is listed twice")
        return self


class MemorySpec(StrictModel):
    """Guest memory."""

    size: Quantity = Field(description="Memory at boot, e.g. 2Gi.")
    maxSize: Quantity | None = Field(
        default=None, description="Upper bound for memory hot-plug (>= size), e.g. 8Gi; default: size."
    )
    dimmSlots: int | None = Field(
        default=None, ge=1, le=256,
        description="DIMM slots for memory-device hot-plug (libvirt <maxMemory slots>); needs dimmMaxSize.",
    )
    dimmMaxSize: Quantity | None = Field(
        default=None, description="Ceiling of memory including hot-plugged DIMMs (libvirt <maxMemory>)."
    )

    @model_validator(mode="after")
    def _max(self) -> MemorySpec:
        if (self.dimmSlots is None) != (self.dimmMaxSize is None):
            raise field_error("dimmSlots", "dimmSlots and dimmMaxSize go together: set both or neither")
        if parse_quantity(self.size) < MIN_MEMORY:
            raise field_error("size", f"memory size must be at least 1Mi, got {self.size!r}")
        if self.maxSize is not None and parse_quantity(self.maxSize) < parse_quantity(self.size):
            raise field_error("maxSize", f"maxSize ({self.maxSize}) must be >= size ({self.size})")
        return self

    @property
    def size_bytes(self) -> int:
        return parse_quantity(self.size)

    @property
    def max_size_bytes(self) -> int:
        return parse_quantity(self.maxSize) if self.maxSize is not None else self.size_bytes


class DiskAttachment(StrictModel):
    """A Disk attached to the VM."""

    disk: Name = Field(description="Name of a Disk object.")
    bus: Literal["virtio", "scsi", "sata", "ide", "fdc"] = Field(
        default="virtio",
        description="virtio (fastest, hot-pluggable), scsi (virtio-scsi, hot-pluggable), sata, ide; fdc for a "
        "floppy.",
    )
    bootOrder: int | None = Field(
        default=None, ge=1, description="Boot priority (1 first); unique within the VM."
    )
    readOnly: bool = Field(default=False, description="Attach read-only (a cdrom always is).")
    device: Literal["disk", "cdrom", "floppy"] = Field(
        default="disk", description="disk, cdrom (read-only media, bus sata/ide/scsi) or floppy (bus fdc)."
    )
    cache: Literal["default", "none", "writethrough", "writeback", "directsync", "unsafe"] | None = Field(
        default=None, description="Host page-cache mode; default: QEMU's (writeback)."
    )
    discard: Literal["unmap", "ignore"] | None = Field(
        default=None, description="unmap: pass the guest's TRIM to the image; default: ignore."
    )
    io: Literal["native", "threads", "io_uring"] | None = Field(
        default=None, description="Asynchronous I/O mode; default: QEMU's."
    )

    @model_validator(mode="after")
    def _device(self) -> DiskAttachment:
        return _check_drive(self, self.device, self.bus)


def _check_drive(model: _M, device: str, bus: str) -> _M:
    if device == "cdrom" and bus not in ("sata", "ide", "scsi"):
        raise field_error("bus", f"a cdrom sits on bus sata, ide or scsi, not {bus}")
    if device == "floppy" and bus != "fdc":
        raise field_error("bus", f"a floppy sits on bus fdc, not {bus}")
    if device == "disk" and bus == "fdc":
        raise field_error("bus", "bus fdc is for floppy drives")
    return model


class EmptyDrive(StrictModel):
    """A cdrom or floppy drive with no media in it."""

    device: Literal["cdrom", "floppy"] = Field(default="cdrom", description="cdrom or floppy.")
    bus: Literal["sata", "ide", "scsi", "fdc"] = Field(default="sata", description="sata, ide, scsi; fdc for floppy.")
    bootOrder: int | None = Field(default=None, ge=1, description="Boot priority (1 first); unique within the VM.")

    @model_validator(mode="after")
    def _device(self) -> EmptyDrive:
        return _check_drive(self, self.device, self.bus)


class Nic(StrictModel):
    """A network interface."""

    name: Name = Field(description="Interface name within the VM, unique, e.g. eth0 or lan.")
    network: Name = Field(description="Name of a Network object.")
    model: Literal["virtio", "e1000", "rtl8139"] = Field(
        default="virtio",
        description="Device model: virtio (fast) or e1000/rtl8139 for guests without virtio.",
    )
    mac: MacAddress | None = Field(
        default=None, description="Fixed MAC address; default: generated once and kept in status."
    )
    bootOrder: int | None = Field(
        default=None, ge=1, description="Network boot priority (1 first); unique among disks, drives and NICs."
    )


class Placement(StrictModel):
    """Constraints on which host runs the VM."""

    allowedHosts: tuple[Name, ...] = Field(default=(), description="Only these hosts; empty = any host.")
    hostSelector: Labels = Field(
        default_factory=dict, description="Only hosts whose labels include all of these, e.g. {gpu: 'true'}."
    )
    affinityGroup: Name | None = Field(default=None, description="Run on the same host as VMs of this group.")
    antiAffinityGroup: Name | None = Field(
        default=None, description="Never run on a host that runs another VM of this group."
    )

    @model_validator(mode="after")
    def _groups(self) -> Placement:
        if self.affinityGroup is not None and self.affinityGroup == self.antiAffinityGroup:
            raise field_error("antiAffinityGroup", "affinityGroup and antiAffinityGroup must differ")
        if len(set(self.allowedHosts)) != len(self.allowedHosts):
            raise field_error("allowedHosts", "a host is listed twice")
        return self


class HighAvailability(StrictModel):
    """Restart on another host when the VM's host fails (after fencing)."""

    enabled: bool = Field(default=False, description="Restart the VM elsewhere after its host is fenced.")
    priority: int = Field(default=50, ge=0, le=100, description="Higher restarts first (0-100).")


class BootSpec(StrictModel):
    """Firmware, or direct kernel boot."""

    firmware: Literal["bios", "uefi"] = Field(default="bios", description="bios (SeaBIOS) or uefi (OVMF).")
    kernel: str | None = Field(
        default=None, min_length=1, description="Kernel image path on the host (direct boot)."
    )
    initrd: str | None = Field(
        default=None, min_length=1, description="Initramfs path on the host (needs kernel)."
    )
    cmdline: str | None = Field(
        default=None, description="Kernel command line (needs kernel), e.g. console=ttyS0."
    )
    devices: tuple[Literal["hd", "cdrom", "network", "fd"], ...] = Field(
        default=(), description="Boot device order by type (BIOS style); not together with any bootOrder."
    )

    @model_validator(mode="after")
    def _kernel(self) -> BootSpec:
        for name in ("initrd", "cmdline"):
            if getattr(self, name) is not None and self.kernel is None:
                raise field_error("kernel", f"{name} is set, so kernel is required (direct kernel boot)")
        return self


class Passthrough(StrictModel):
    """libvirt XML the spec has no field for, kept verbatim (as ``virtplane adopt`` writes it). Only what
    cannot reach a host resource is accepted: see ``specs/passthrough.py`` for the allow-list."""

    devices: tuple[str, ...] = Field(
        default=(), description="Device elements, e.g. <graphics type='vnc'/> or <video><model type='vga'/></video>."
    )
    features: tuple[str, ...] | None = Field(
        default=None, description="The children of <features>; default: <acpi/> and <apic/>."
    )
    elements: tuple[str, ...] = Field(
        default=(), description="Domain elements: <clock>, <on_poweroff|on_reboot|on_crash>, <pm>, <title>..."
    )

    @model_validator(mode="after")
    def _safe(self) -> Passthrough:
        for field, check in (("devices", device_refusal), ("features", feature_refusal),
                             ("elements", element_refusal)):
            for index, text in enumerate(getattr(self, field) or ()):
                try:
                    why = check(parse_snippet(text))
                except ValueError as exc:
                    why = str(exc)
                if why is not None:
                    raise field_error(f"{field}.{index}", why)
        return self


RunStrategy = Literal["Always", "RerunOnFailure", "Manual", "Halted"]


class VmTemplateCommon(StrictModel):
    """Fields shared by VirtualMachineSpec and the template of a VirtualMachinePool."""

    runStrategy: RunStrategy = Field(
        default="Always",
        description="Always: keep running; RerunOnFailure: restart after a crash but not after a guest "
        "shutdown; Manual: start/stop only by command; Halted: keep stopped.",
    )
    cpu: CpuSpec = Field(description="Virtual CPUs.")
    memory: MemorySpec = Field(description="Guest memory.")
    nics: tuple[Nic, ...] = Field(default=(), description="Network interfaces; names unique.")
    placement: Placement = Field(default_factory=Placement, description="Host constraints.")
    highAvailability: HighAvailability = Field(
        default_factory=HighAvailability, description="Restart elsewhere when the host fails."
    )
    updatePolicy: Literal["Manual", "Auto"] = Field(
        default="Manual",
        description="For changes that cannot be applied live: Manual sets the RestartRequired condition; "
        "Auto restarts (or migrates) the VM at once.",
    )
    boot: BootSpec = Field(default_factory=BootSpec, description="Firmware or direct kernel boot.")
    passthrough: Passthrough = Field(
        default_factory=Passthrough, description="libvirt XML without a field here, kept verbatim (allow-listed)."
    )
    machine: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="QEMU machine type, e.g. q35 or pc-q35-7.2; default: q35.",
    )

    @model_validator(mode="after")
    def _nics_unique(self) -> VmTemplateCommon:
        seen: dict[str, int] = {}
        macs: dict[str, int] = {}
        for index, nic in enumerate(self.nics):
            if nic.name in seen:
                raise field_error(
                    f"nics.{index}.name", f"nic name {nic.name!r} is used twice (also nics[{seen[nic.name]}])"
                )
            seen[nic.name] = index
            if nic.mac is not None:
                mac = nic.mac.lower()
                if mac in macs:
                    raise field_error(
                        f"nics.{index}.mac", f"MAC {nic.mac} is used twice (also nics[{macs[mac]}])"
                    )
                macs[mac] = index
        return self


class VirtualMachineSpec(VmTemplateCommon):
    """Desired state of a virtual machine."""

    cluster: Name = Field(description="Cluster the VM runs in.")
    disks: tuple[DiskAttachment, ...] = Field(default=(), description="Attached Disks; each Disk once.")
    emptyDrives: tuple[EmptyDrive, ...] = Field(default=(), description="cdrom/floppy drives with no media.")

    @model_validator(mode="after")
    def _boot_orders(self) -> VirtualMachineSpec:
        where: dict[int, str] = {}
        orders = [(f"disks.{i}", a.bootOrder) for i, a in enumerate(self.disks)]
        orders += [(f"emptyDrives.{i}", d.bootOrder) for i, d in enumerate(self.emptyDrives)]
        orders += [(f"nics.{i}", n.bootOrder) for i, n in enumerate(self.nics)]
        for path, order in orders:
            if order is None:
                continue
            if order in where and not path.startswith("disks."):
                raise field_error(f"{path}.bootOrder", f"bootOrder {order} is used twice (also {where[order]}); "
                                  "boot orders must be unique")
            where.setdefault(order, path)
        if where and self.boot.devices:
            raise field_error("boot.devices", "boot.devices and bootOrder do not go together (libvirt refuses "
                              "both); keep one")
        return self

    @model_validator(mode="after")
    def _disks_unique(self) -> VirtualMachineSpec:
        seen: dict[str, int] = {}
        boot: dict[int, int] = {}
        for index, attachment in enumerate(self.disks):
            if attachment.disk in seen:
                raise field_error(
                    f"disks.{index}.disk",
                    f"disk {attachment.disk!r} is attached twice (also disks[{seen[attachment.disk]}])",
                )
            seen[attachment.disk] = index
            if attachment.bootOrder is not None:
                if attachment.bootOrder in boot:
                    raise field_error(
                        f"disks.{index}.bootOrder",
                        f"bootOrder {attachment.bootOrder} is used twice "
                        f"(also disks[{boot[attachment.bootOrder]}]); boot orders must be unique",
                    )
                boot[attachment.bootOrder] = index
        return self


class VirtualMachine(Resource):
    """A virtual machine (``kind: VirtualMachine``)."""

    kind: Literal["VirtualMachine"] = Field(description="Always VirtualMachine.")
    spec: VirtualMachineSpec = Field(description="Desired state of the VM.")


class NicStatus(StrictModel):
    """What a NIC got."""

    name: str = Field(description="NIC name from the spec.")
    mac: str = Field(description="MAC address in use (given or generated).")
    target: str | None = Field(default=None, description="Host-side device, e.g. vnet3.")


class VirtualMachineStatus(StatusBase):
    """Observed state of a virtual machine."""

    phase: (
        Literal[
            "Pending",
            "Scheduling",
            "Starting",
            "Running",
            "Migrating",
            "Stopping",
            "Stopped",
            "Failed",
            "Unknown",
        ]
        | None
    ) = Field(
        default=None, description="Lifecycle phase; Unknown when its host is unreachable and not fenced."
    )
    host: str | None = Field(default=None, description="Host chosen by the scheduler / running the VM.")
    uuid: str | None = Field(default=None, description="libvirt domain UUID (generated once).")
    nics: tuple[NicStatus, ...] = Field(default=(), description="MACs and devices of the NICs.")
    cores: int | None = Field(default=None, description="vCPUs currently online.")
    memory: int | None = Field(default=None, description="Memory currently assigned, bytes.")
    startTime: datetime | None = Field(default=None, description="When the VM last started.")
    restartCount: int = Field(
        default=0, ge=0, description="Restarts done by controllers (crash, HA, update)."
    )
    migration: str | None = Field(default=None, description="Name of the Migration in progress, if any.")
