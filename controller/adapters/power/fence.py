"""Fencing: make sure a host is off, the way oVirt does it: status -> off -> verify.

1. ``status``: is the agent usable at all? A refused login or a missing agent ends the fence here
   (an ``off`` would fail the same way); an unreachable device or a timeout still tries ``off``.
2. ``off``.
3. ``status`` every ``poll_interval`` until it says OFF or ``verify_timeout`` passes (once only when
   ``off`` failed: the host may be off anyway, but there is nothing to wait for).

The fence succeeded only when a ``status`` after ``off`` said OFF. Every attempt, failed or not, is in
:attr:`FenceReport.attempts` in order, ready for Host status and events.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from controller.adapters.power.agent import PowerAgent
from controller.adapters.power.model import ErrorKind, PowerError, PowerResult, PowerState

STOP_AFTER_STATUS = frozenset({ErrorKind.AUTH_FAILED, ErrorKind.AGENT_MISSING, ErrorKind.CONFIG})


@dataclass(frozen=True)
class FenceReport:
    ok: bool
    state: PowerState
    """The last state a status reported (UNKNOWN if none answered)."""
    attempts: tuple[PowerResult, ...]
    duration_s: float
    reason: str
    """Why it ended, for display only."""

    def to_status(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "state": self.state.value,
            "durationSeconds": round(self.duration_s, 3),
            "reason": self.reason,
            "attempts": [attempt.to_status() for attempt in self.attempts],
        }


async def _attempt(call: Callable[[], Awaitable[PowerResult]], attempts: list[PowerResult]) -> PowerResult:
    try:
        result = await call()
    except PowerError as err:
        result = err.result
    attempts.append(result)
    return result


async def fence(
    agent: PowerAgent,
    *,
    verify_timeout: float = 60.0,
    poll_interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> FenceReport:
    """Power the host off through ``agent`` and verify it is off."""
    started = clock()
    attempts: list[PowerResult] = []

    def report(ok: bool, state: PowerState, reason: str) -> FenceReport:
        return FenceReport(ok, state, tuple(attempts), clock() - started, reason)

    first = await _attempt(agent.status, attempts)
    if first.error in STOP_AFTER_STATUS:
        return report(False, PowerState.UNKNOWN, f"status failed ({first.error.value}); not trying off")
    off = await _attempt(agent.off, attempts)
    if not off.ok and off.error in STOP_AFTER_STATUS:
        return report(False, PowerState.UNKNOWN, f"off failed ({off.error.value})")
    # After a failed off, one status decides (the host may be off anyway); after a good one, poll.
    deadline = clock() + (verify_timeout if off.ok else 0.0)
    state = PowerState.UNKNOWN
    while True:
        check = await _attempt(agent.status, attempts)
        if check.ok:
            state = check.state
        if check.ok and check.state is PowerState.OFF:
            return report(True, PowerState.OFF, "off verified by status")
        if clock() >= deadline:
            why = "off failed" if not off.ok else "status never said off"
            return report(False, state, f"{why}; gave up after verifying for {verify_timeout:.0f} s")
        await anyio.sleep(poll_interval)
