"""The ``lab`` agent: the power switch of a `virtplane lab` host, driven in-process.

``off`` is :meth:`Lab.power_off` (SIGKILL of the host's libvirtd, QEMUs and virtlockd: a pulled plug),
``on`` is :meth:`Lab.power_on`, ``status`` is whether the host's libvirtd runs. The blocking lab calls
run in a worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio

from controller.adapters.power.agent import PowerAgent
from controller.adapters.power.model import AgentName, ErrorKind, PowerAction, PowerResult, PowerState, failure
from controller.dev.lab.hosts import Lab, LabError

T = TypeVar("T")


class LabAgent(PowerAgent):
    name = AgentName("lab")

    def __init__(self, lab_dir: Path | str, host: str, *, qemu_caps_dir: Path | str | None = None,
                 timeout: float = 60.0) -> None:
        self.lab_dir = Path(lab_dir)
        self.host = host
        self.qemu_caps_dir = qemu_caps_dir
        self.timeout = timeout

    def _lab(self) -> Lab:
        return Lab(self.lab_dir, qemu_caps_dir=self.qemu_caps_dir)

    async def _call(self, action: PowerAction, fn: Callable[[], T]) -> tuple[T, float]:
        started = time.monotonic()
        # abandon_on_cancel: at the deadline we stop waiting; the lab call itself finishes on its own.
        with anyio.move_on_after(self.timeout) as scope:
            try:
                value = await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
            except LabError as err:
                raise failure(ErrorKind.FAILED, self.name, action, time.monotonic() - started, str(err)) from err
        if scope.cancelled_caught:
            raise failure(ErrorKind.TIMEOUT, self.name, action, time.monotonic() - started,
                          f"lab {action.value} of {self.host} took longer than {self.timeout:.0f} s")
        return value, time.monotonic() - started

    async def status(self) -> PowerResult:
        host, took = await self._call(PowerAction.STATUS, lambda: self._lab().host(self.host))
        state = PowerState.ON if host.running else PowerState.OFF
        return PowerResult(self.name, PowerAction.STATUS, True, state, took, f"{self.host} is {state.value}")

    async def off(self) -> PowerResult:
        _, took = await self._call(PowerAction.OFF, lambda: self._lab().power_off(self.host))
        return PowerResult(self.name, PowerAction.OFF, True, PowerState.OFF, took, f"{self.host} powered off")

    async def on(self) -> PowerResult:
        _, took = await self._call(PowerAction.ON, lambda: self._lab().power_on(self.host))
        return PowerResult(self.name, PowerAction.ON, True, PowerState.ON, took, f"{self.host} powered on")
