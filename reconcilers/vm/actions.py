"""Actions on a domain (the VirtualMachine controller's family). Frozen dataclasses named verb+noun."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import DiskDevice, DomainConfig, DomainName, NicDevice, OwnerMetadata
from reconcilers.plan import HostAction, Impact


@dataclass(frozen=True)
class DefineDomain(HostAction):
    """Define (or redefine) the persistent config. ``next_boot``: it holds changes a running guest only
    gets at its next boot (the rest is applied live by the actions that follow)."""

    config: DomainConfig
    next_boot: bool = False

    @property
    def impact(self) -> Impact:
        return Impact.NEXT_BOOT if self.next_boot else Impact.NONE

    def target(self) -> str:
        return f"{self.config.name} on {self.host}"


@dataclass(frozen=True)
class StampOwner(HostAction):
    """Write our owner metadata into a domain being adopted, live and persistent, without redefining it."""

    domain: DomainName
    owner: OwnerMetadata
    live: bool
    IMPACT = Impact.NONE

    def target(self) -> str:
        return f"{self.domain} on {self.host} (adopted by {self.owner.kind}/{self.owner.name})"


@dataclass(frozen=True)
class StartDomain(HostAction):
    domain: DomainName
    IMPACT = Impact.NONE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class ShutdownDomain(HostAction):
    """Graceful shutdown (ACPI), then destroy after ``timeout_s`` if the guest does not stop."""

    domain: DomainName
    timeout_s: float = 60.0
    IMPACT = Impact.RESTART

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class DestroyDomain(HostAction):
    """Hard power-off."""

    domain: DomainName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class UndefineDomain(HostAction):
    domain: DomainName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class AttachDisk(HostAction):
    domain: DomainName
    disk: DiskDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.disk.target} to {self.domain}"


@dataclass(frozen=True)
class DetachDisk(HostAction):
    domain: DomainName
    disk: DiskDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.disk.target} from {self.domain}"


@dataclass(frozen=True)
class AttachNic(HostAction):
    domain: DomainName
    nic: NicDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.nic.name} to {self.domain}"


@dataclass(frozen=True)
class DetachNic(HostAction):
    domain: DomainName
    nic: NicDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.nic.name} from {self.domain}"


@dataclass(frozen=True)
class SetMemory(HostAction):
    """Balloon to ``memory_kib`` (<= max) on the running guest and in the persistent config."""

    domain: DomainName
    memory_kib: int
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.domain} to {self.memory_kib // 1024} MiB"


@dataclass(frozen=True)
class SetVcpus(HostAction):
    domain: DomainName
    vcpus: int
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.domain} to {self.vcpus}"
