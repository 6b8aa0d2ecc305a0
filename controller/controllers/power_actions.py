"""How the one executor runs the Host controller's power actions: fencing (status -> off -> verify) and
power saving's power-off / power-on, through the host's agent (``controller.adapters.power``).

A failing agent is an outcome, not an error: each handler returns a ``PowerOperation`` (every attempt, the
verified state) that goes into Host status and events. Passwords are read from ``--secrets-dir`` at call
time and never appear in what is returned.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from controller.adapters.power import PowerContext, PowerError, PowerResult, PowerState, agent_for, fence
from controller.adapters.power.agent import PowerAgent
from controller.runtime.context import Runtime
from controller.runtime.registry import Handler
from reconcilers.host.actions import FenceHost, PowerOffHost, PowerOnHost
from specs.host import Host, PowerAttempt, PowerOperation

VERIFY_TIMEOUT_S = 60.0


def _agent(rt: Runtime, name: str) -> PowerAgent | str | None:
    """The host's agent, or why there is none (a message)."""
    host = rt.cache.get("Host", name, Host)
    if host is None or host.spec.powerManagement is None:
        return f"host {name} has no powerManagement"
    try:
        return agent_for(name, host.spec.powerManagement, PowerContext(secrets_dir=rt.secrets_dir, lab_dir=rt.lab_dir))
    except ValueError as err:
        return str(err)


def _attempt(r: PowerResult) -> PowerAttempt:
    return PowerAttempt(agent=r.agent, action=r.action.value, ok=r.ok, state=r.state.value,
                        durationSeconds=round(r.duration_s, 3), message=r.message,
                        error=r.error.value if r.error else None)


def _config_failure(rt: Runtime, operation: str, reason: str, why: str) -> PowerOperation:
    return PowerOperation(operation=operation, reason=reason, started=rt.clock(), ok=False,
                          state="unknown", durationSeconds=0.0,
                          attempts=(PowerAttempt(agent="?", action="status", ok=False, state="unknown",
                                                 durationSeconds=0.0, message=why, error="ConfigError"),))


async def _fence(a: FenceHost, rt: Runtime) -> PowerOperation:
    started = rt.clock()
    agent = _agent(rt, a.host)
    if not isinstance(agent, PowerAgent):
        return _config_failure(rt, "fence", a.reason, agent or "agent none")
    report = await fence(agent, verify_timeout=VERIFY_TIMEOUT_S)
    return PowerOperation(operation="fence", reason=a.reason, started=started, ok=report.ok,
                          state=report.state.value, durationSeconds=round(report.duration_s, 3),
                          attempts=tuple(_attempt(r) for r in report.attempts))


async def _switch(rt: Runtime, host: str, operation: str, reason: str, want: PowerState,
                  call: Callable[[PowerAgent], Awaitable[PowerResult]]) -> PowerOperation:
    """Power on or off, then one status to verify."""
    started, clock = rt.clock(), time.monotonic()
    agent = _agent(rt, host)
    if not isinstance(agent, PowerAgent):
        return _config_failure(rt, operation, reason, agent or "agent none")
    attempts: list[PowerResult] = []
    for step in (call, lambda ag: ag.status()):
        try:
            attempts.append(await step(agent))
        except PowerError as err:
            attempts.append(err.result)
            break
    last = attempts[-1]
    ok = len(attempts) == 2 and last.ok and last.state is want
    return PowerOperation(operation=operation, reason=reason, started=started, ok=ok,
                          state=last.state.value if last.ok else "unknown",
                          durationSeconds=round(time.monotonic() - clock, 3),
                          attempts=tuple(_attempt(r) for r in attempts))


async def _power_off(a: PowerOffHost, rt: Runtime) -> PowerOperation:
    return await _switch(rt, a.host, "power-off", a.reason, PowerState.OFF, lambda ag: ag.off())


async def _power_on(a: PowerOnHost, rt: Runtime) -> PowerOperation:
    return await _switch(rt, a.host, "power-on", a.reason, PowerState.ON, lambda ag: ag.on())


HANDLERS: dict[type, Handler] = {FenceHost: _fence, PowerOffHost: _power_off, PowerOnHost: _power_on}
