"""Actions on a host's power (the Host controller's family): fencing and power saving."""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.plan import HostAction, Impact


@dataclass(frozen=True)
class FenceHost(HostAction):
    """Power the host off through its agent and verify it is off (status -> off -> status), so that its HA
    VMs can be restarted elsewhere without ever running twice."""

    agent: str
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.host} through its {self.agent} agent"


@dataclass(frozen=True)
class PowerOffHost(HostAction):
    """Power saving: power an empty host off through its agent."""

    agent: str
    IMPACT = Impact.DESTRUCTIVE

    def target(self) -> str:
        return f"{self.host} through its {self.agent} agent"


@dataclass(frozen=True)
class PowerOnHost(HostAction):
    """Power saving: power a host on again because capacity is needed."""

    agent: str

    def target(self) -> str:
        return f"{self.host} through its {self.agent} agent"
