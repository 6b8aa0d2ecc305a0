"""Every action a plan can hold. Frozen dataclasses named verb+noun; ``impact`` is a class attribute.

The executor in ``controller/`` dispatches on the type; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import (
    DirPoolConfig,
    DiskDevice,
    DomainConfig,
    DomainName,
    HostName,
    NetworkConfig,
    NetworkName,
    NicDevice,
    PoolName,
    VolumeConfig,
    VolumeName,
)
from reconcilers.plan import Action, Impact

# ---------------------------------------------------------------- domains


@dataclass(frozen=True)
class DefineDomain(Action):
    """Define (or redefine) the persistent config. ``next_boot``: it holds changes a running guest only
    gets at its next boot (the rest is applied live by the actions that follow)."""

    host: HostName
    config: DomainConfig
    next_boot: bool = False

    @property
    def impact(self) -> Impact:
        return Impact.NEXT_BOOT if self.next_boot else Impact.NONE

    def target(self) -> str:
        return f"{self.config.name} on {self.host}"


@dataclass(frozen=True)
class StartDomain(Action):
    host: HostName
    domain: DomainName
    IMPACT = Impact.NONE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class ShutdownDomain(Action):
    """Graceful shutdown (ACPI), then destroy after ``timeout_s`` if the guest does not stop."""

    host: HostName
    domain: DomainName
    timeout_s: float = 60.0
    IMPACT = Impact.RESTART

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class DestroyDomain(Action):
    """Hard power-off."""

    host: HostName
    domain: DomainName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class UndefineDomain(Action):
    host: HostName
    domain: DomainName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class AttachDisk(Action):
    host: HostName
    domain: DomainName
    disk: DiskDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.disk.target} to {self.domain}"


@dataclass(frozen=True)
class DetachDisk(Action):
    host: HostName
    domain: DomainName
    disk: DiskDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.disk.target} from {self.domain}"


@dataclass(frozen=True)
class AttachNic(Action):
    host: HostName
    domain: DomainName
    nic: NicDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.nic.name} to {self.domain}"


@dataclass(frozen=True)
class DetachNic(Action):
    host: HostName
    domain: DomainName
    nic: NicDevice
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.nic.name} from {self.domain}"


@dataclass(frozen=True)
class SetMemory(Action):
    """Balloon to ``memory_kib`` (<= max) on the running guest and in the persistent config."""

    host: HostName
    domain: DomainName
    memory_kib: int
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.domain} to {self.memory_kib // 1024} MiB"


@dataclass(frozen=True)
class SetVcpus(Action):
    host: HostName
    domain: DomainName
    vcpus: int
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.domain} to {self.vcpus}"


# ---------------------------------------------------------------- storage and networks


@dataclass(frozen=True)
class EnsurePool(Action):
    host: HostName
    pool: DirPoolConfig

    def target(self) -> str:
        return f"{self.pool.name} ({self.pool.path}) on {self.host}"


@dataclass(frozen=True)
class CreateVolume(Action):
    host: HostName
    pool: PoolName
    volume: VolumeConfig
    source_path: str | None = None  # full copy / import from this file
    source_format: str | None = None

    def target(self) -> str:
        return f"{self.pool}/{self.volume.name} on {self.host}"


@dataclass(frozen=True)
class ResizeVolume(Action):
    host: HostName
    pool: PoolName
    volume: VolumeName
    capacity_bytes: int
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.pool}/{self.volume} to {self.capacity_bytes} bytes"


@dataclass(frozen=True)
class DeleteVolume(Action):
    host: HostName
    pool: PoolName
    volume: VolumeName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.pool}/{self.volume} on {self.host}"


@dataclass(frozen=True)
class EnsureNetwork(Action):
    host: HostName
    network: NetworkConfig

    def target(self) -> str:
        return f"{self.network.name} on {self.host}"


@dataclass(frozen=True)
class DeleteNetwork(Action):
    host: HostName
    network: NetworkName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.network} on {self.host}"


# ---------------------------------------------------------------- migration


@dataclass(frozen=True)
class MigrationSettings:
    """How one live migration runs (from the cluster's MigrationPolicy and the storage domains)."""

    max_downtime_ms: int = 500
    bandwidth_mib_s: int | None = None
    auto_converge: bool = True
    post_copy: bool = False  # allow switching to post-copy later (VIR_MIGRATE_POSTCOPY)
    unsafe: bool = False  # every disk is on a storage domain declared shared (VIR_MIGRATE_UNSAFE)
    migrate_uri: str | None = None  # where the data goes, e.g. tcp://10.0.0.2; None = libvirt's choice
    peer_uri: str | None = None  # the target's libvirt URI for a peer-to-peer migration; None = relayed by us


@dataclass(frozen=True)
class MigrateDomain(Action):
    """Start a live migration of ``domain`` from ``host`` to ``target_host``; it is observed, not awaited.
    ``migration``: the Migration object that asked for it, if any."""

    host: HostName
    domain: DomainName
    target_host: HostName
    settings: MigrationSettings = MigrationSettings()
    migration: str | None = None
    IMPACT = Impact.MIGRATION

    def target(self) -> str:
        return f"{self.domain} from {self.host} to {self.target_host}"


@dataclass(frozen=True)
class StartPostCopy(Action):
    """Switch a running migration that does not converge to post-copy (the guest runs on the target)."""

    host: HostName
    domain: DomainName
    IMPACT = Impact.MIGRATION

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class AbortMigration(Action):
    """Cancel a running migration; the guest keeps running on the source."""

    host: HostName
    domain: DomainName
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"
