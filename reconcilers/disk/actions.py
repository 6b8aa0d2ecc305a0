"""Actions on volumes (the Disk controller's family)."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import PoolName, VolumeConfig, VolumeName
from reconcilers.plan import HostAction, Impact
from reconcilers.snapshot.actions import SnapshotName


@dataclass(frozen=True)
class CreateVolume(HostAction):
    pool: PoolName
    volume: VolumeConfig
    source_path: str | None = None  # full copy / import from this file
    source_format: str | None = None

    def target(self) -> str:
        return f"{self.pool}/{self.volume.name} on {self.host}"


@dataclass(frozen=True)
class ImportImage(HostAction):
    """Convert an image (a file the server may read, or an http(s) URL it downloads) into the Disk's volume
    with ``qemu-img convert``, reading it as ``source_format`` (None: detected), then check the result."""

    disk: str
    pool: PoolName
    volume: VolumeConfig
    source: str
    source_format: str | None
    dest_path: str

    def target(self) -> str:
        return f"{self.pool}/{self.volume.name} from {self.source} on {self.host}"


@dataclass(frozen=True)
class ResizeVolume(HostAction):
    pool: PoolName
    volume: VolumeName
    capacity_bytes: int
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.pool}/{self.volume} to {self.capacity_bytes} bytes"


@dataclass(frozen=True)
class DeleteVolume(HostAction):
    pool: PoolName
    volume: VolumeName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.pool}/{self.volume} on {self.host}"


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
