"""Actions on libvirt networks (the Network controller's family)."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import NetworkConfig, NetworkName
from reconcilers.plan import HostAction, Impact


@dataclass(frozen=True)
class EnsureNetwork(HostAction):
    network: NetworkConfig

    def target(self) -> str:
        return f"{self.network.name} on {self.host}"


@dataclass(frozen=True)
class DeleteNetwork(HostAction):
    network: NetworkName
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.network} on {self.host}"
