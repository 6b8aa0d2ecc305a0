"""Actions on libvirt snapshots of a domain (the Snapshot controller's family)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NewType

from reconcilers.domain import DomainName
from reconcilers.plan import HostAction, Impact

SnapshotName = NewType("SnapshotName", str)


@dataclass(frozen=True)
class CreateSnapshot(HostAction):
    """Take the snapshot. ``targets``: disks whose content is saved; ``excluded``: the domain's other disks."""

    domain: DomainName
    snapshot: SnapshotName
    memory: bool
    targets: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    description: str = ""
    IMPACT = Impact.LIVE

    def target(self) -> str:
        what = "disks+memory" if self.memory else "disks " + ",".join(self.targets)
        return f"{self.snapshot} of {self.domain} on {self.host} ({what})"


@dataclass(frozen=True)
class DeleteSnapshot(HostAction):
    domain: DomainName
    snapshot: SnapshotName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.snapshot} of {self.domain} on {self.host}"


@dataclass(frozen=True)
class RevertSnapshot(HostAction):
    """Revert the domain to the snapshot; ``start``: run the guest afterwards (a disk-only snapshot boots it
    again; a memory snapshot resumes it regardless)."""

    domain: DomainName
    snapshot: SnapshotName
    start: bool
    requested: str
    IMPACT = Impact.DESTRUCTIVE  # the guest's current state is lost

    def target(self) -> str:
        return f"{self.domain} to {self.snapshot} on {self.host}"
