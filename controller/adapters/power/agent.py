"""The one small interface every power agent implements.

An agent controls the power of one host. Each call is one attempt and returns a
:class:`~controller.adapters.power.model.PowerResult` (agent, action, ok, state, duration, message) or raises a
:class:`~controller.adapters.power.model.PowerError` whose ``result`` is the failed attempt, so callers
(:func:`controller.adapters.power.fence.fence`, Host status, events) record every attempt the same way.
Calls are bounded in time and never block the event loop.
"""

from __future__ import annotations

import abc
import time

from controller.adapters.power.model import AgentName, PowerAction, PowerResult, PowerState


class PowerAgent(abc.ABC):
    """Power control of one host. Implementations: lab, ipmilan, redfish, ssh."""

    name: AgentName

    @abc.abstractmethod
    async def status(self) -> PowerResult:
        """The power state (``result.state``: ON, OFF, or UNKNOWN when the agent cannot tell)."""

    @abc.abstractmethod
    async def on(self) -> PowerResult:
        """Power on; ok once the agent says the machine is on."""

    @abc.abstractmethod
    async def off(self) -> PowerResult:
        """Power off hard (no graceful shutdown): what fencing needs."""

    async def reboot(self) -> PowerResult:
        """Power off, then on; one result covering both."""
        started = time.monotonic()
        await self.off()
        result = await self.on()
        return PowerResult(
            self.name, PowerAction.REBOOT, True, PowerState.ON, time.monotonic() - started, result.message
        )
