"""VirtualMachine: the desired definition and run state of one guest.

Chosen host, generated MACs and UUID live in VirtualMachineStatus, never in the spec.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from specs.errors import field_error
from specs.meta import Labels, Name, Resource, StatusBase, StrictModel
from specs.quantity import Quantity, parse_quantity

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

    @property
    def max_cores(self) -> int:
        """Effective hot-plug limit: maxCores, else cores."""
        return self.maxCores if self.maxCores is not None else self.cores

    @model_validator(mode="after")
    def _max(self) -> CpuSpec:
        if self.maxCores is not None and self.maxCores < self.cores:
            raise field_error("maxCores", f"maxCores ({self.maxCores}) must be >= cores ({self.cores})")
        return self


class MemorySpec(StrictModel):
    """Guest memory."""

    size: Quantity = Field(description="Memory at boot, e.g. 2Gi.")
    maxSize: Quantity | None = Field(
        default=None, description="Upper bound for memory hot-plug (>= size), e.g. 8Gi; default: size."
    )

    @model_validator(mode="after")
    def _max(self) -> MemorySpec:
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
    bus: Literal["virtio", "scsi", "sata", "ide"] = Field(
        default="virtio",
        description="virtio (fastest, hot-pluggable), scsi (virtio-scsi, hot-pluggable), sata, ide.",
    )
    bootOrder: int | None = Field(
        default=None, ge=1, description="Boot priority (1 first); unique within the VM."
    )
    readOnly: bool = Field(default=False, description="Attach read-only.")


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

    @model_validator(mode="after")
    def _kernel(self) -> BootSpec:
        for name in ("initrd", "cmdline"):
            if getattr(self, name) is not None and self.kernel is None:
                raise field_error("kernel", f"{name} is set, so kernel is required (direct kernel boot)")
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
