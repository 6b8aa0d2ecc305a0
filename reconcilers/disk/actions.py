"""Actions on volumes (the Disk controller's family)."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import DomainName, HostName, NfsExport, PoolName, VolumeConfig, VolumeName
from reconcilers.plan import HostAction, Impact
from reconcilers.snapshot.actions import SnapshotName


@dataclass(frozen=True)
class LiveDisk:
    """A running guest that has the image open: grown there with ``blockresize``, never behind QEMU's back."""

    host: HostName
    domain: DomainName
    target: str  # guest device, e.g. "vdb"


def _where(pool: PoolName, name: str, nfs: NfsExport | None) -> str:
    return nfs.url(name) if nfs is not None else f"{pool}/{name}"


@dataclass(frozen=True)
class CreateVolume(HostAction):
    pool: PoolName
    volume: VolumeConfig
    source_path: str | None = None  # full copy / import from this file
    source_format: str | None = None
    nfs: NfsExport | None = None  # created by the server over libnfs (no pool)

    def target(self) -> str:
        if self.nfs is not None:
            return f"{self.nfs.url(self.volume.name)} (over NFS, from the server)"
        return f"{self.pool}/{self.volume.name} on {self.host}"


@dataclass(frozen=True)
class ResizeVolume(HostAction):
    pool: PoolName
    volume: VolumeName
    capacity_bytes: int
    format: str = "qcow2"
    nfs: NfsExport | None = None
    live: tuple[LiveDisk, ...] = ()  # running guests holding it: blockresize there

    @property
    def impact(self) -> Impact:
        return Impact.LIVE if self.live else Impact.NONE

    def target(self) -> str:
        where = _where(self.pool, self.volume, self.nfs)
        how = ", ".join(f"blockresize {d.domain} {d.target} on {d.host}" for d in self.live)
        return f"{where} to {self.capacity_bytes} bytes" + (f" ({how})" if how else " (offline)")


@dataclass(frozen=True)
class DeleteVolume(HostAction):
    pool: PoolName
    volume: VolumeName
    nfs: NfsExport | None = None
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return _where(self.pool, self.volume, self.nfs) + ("" if self.nfs is not None else f" on {self.host}")


@dataclass(frozen=True)
class CopySnapshotDisk(HostAction):
    """Create a Disk's volume holding what ``source_path`` contained at internal snapshot ``snapshot``."""

    pool: PoolName
    volume: VolumeConfig
    source_path: str
    snapshot: SnapshotName
    dest_dir: str  # the pool's directory as hosts see it

    def target(self) -> str:
        return f"{self.pool}/{self.volume.name} from {self.source_path}@{self.snapshot} on {self.host}"
