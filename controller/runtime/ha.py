"""In-memory HA and power-saving state shared by the Host, Cluster and VirtualMachine controllers.

- ``HaRestarts``: where the HA restart after fencing placed each displaced VM (written by the Host
  controller, read by the VirtualMachine controller as a planner input). Lost on restart: the Host
  controller places again what is still displaced (the Host's phase Fenced is in its status).
- ``PowerRequests``: power-saving decisions per host, "on" or "off" (written by the Cluster controller,
  carried out by the Host controller, the only writer of Host status). Lost on restart: the Cluster
  controller decides again.
- ``PolicyClock``: when each cluster's balancer last ran and since when each host has been empty. Lost on
  restart: the balancer waits one interval and idle hosts are powered off later, never sooner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from reconcilers.vm.ha import HaAssignment

PowerRequest = Literal["on", "off"]


class HaRestarts:
    def __init__(self) -> None:
        self._by_vm: dict[str, HaAssignment] = {}
        self.announced: dict[str, str] = {}  # host -> the reason its HA VMs are not restarted, once said

    def assign(self, assignment: HaAssignment) -> None:
        self._by_vm[assignment.vm] = assignment

    def get(self, vm: str) -> HaAssignment | None:
        return self._by_vm.get(vm)

    def forget(self, vm: str) -> None:
        self._by_vm.pop(vm, None)

    def __contains__(self, vm: object) -> bool:
        return vm in self._by_vm


class PowerRequests:
    def __init__(self) -> None:
        self._by_host: dict[str, PowerRequest] = {}

    def request(self, host: str, state: PowerRequest) -> None:
        self._by_host[host] = state

    def get(self, host: str) -> PowerRequest | None:
        return self._by_host.get(host)

    def done(self, host: str) -> None:
        self._by_host.pop(host, None)

    def items(self) -> list[tuple[str, PowerRequest]]:
        return list(self._by_host.items())


@dataclass
class PolicyClock:
    last_run: dict[str, datetime] = field(default_factory=dict)  # cluster -> when its policies last ran
    empty_since: dict[str, datetime] = field(default_factory=dict)  # host -> since when nothing is placed on it
