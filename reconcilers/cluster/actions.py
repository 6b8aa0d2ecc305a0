"""Actions of the Cluster controller: requests that other controllers carry out.

The balancer and power saving never touch a domain or a BMC themselves: a move is a Migration object
(carried out by the VirtualMachine controller like one made by `virtplane migrate`, so it shows in
`get migrations` with its progress), and a power change is a request the Host controller executes through
the host's agent (the only writer of Host status).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconcilers.plan import Action, Impact


@dataclass(frozen=True)
class RequestMigration(Action):
    """Create a Migration object moving ``vm`` from ``source`` to ``destination``, labelled with the cluster."""

    cluster: str
    vm: str
    source: str
    destination: str
    why: Literal["balance", "evacuate"] = "balance"
    IMPACT = Impact.MIGRATION

    def target(self) -> str:
        return f"vm/{self.vm}: {self.source} -> {self.destination}"


@dataclass(frozen=True)
class RequestPower(Action):
    """Power saving: ask the Host controller to power ``host`` on or off through its agent."""

    cluster: str
    host: str
    state: Literal["on", "off"]

    def target(self) -> str:
        return f"host/{self.host} power {self.state}"
