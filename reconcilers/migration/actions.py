"""Live migration actions (the VirtualMachine controller starts, observes and ends migrations)."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import DomainName, HostName
from reconcilers.plan import HostAction, Impact


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
class MigrateDomain(HostAction):
    """Start a live migration of ``domain`` from ``host`` to ``target_host``; it is observed, not awaited.
    ``migration``: the Migration object that asked for it, if any."""

    domain: DomainName
    target_host: HostName
    settings: MigrationSettings = MigrationSettings()
    migration: str | None = None
    IMPACT = Impact.MIGRATION

    def target(self) -> str:
        return f"{self.domain} from {self.host} to {self.target_host}"


@dataclass(frozen=True)
class StartPostCopy(HostAction):
    """Switch a running migration that does not converge to post-copy (the guest runs on the target)."""

    domain: DomainName
    IMPACT = Impact.MIGRATION

    def target(self) -> str:
        return f"{self.domain} on {self.host}"


@dataclass(frozen=True)
class AbortMigration(HostAction):
    """Cancel a running migration; the guest keeps running on the source."""

    domain: DomainName
    IMPACT = Impact.LIVE

    def target(self) -> str:
        return f"{self.domain} on {self.host}"

