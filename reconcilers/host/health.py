"""Host health: from one observation (and what came before) to the host's phase, and the fencing or power
action it needs. Pure: the clock is injected.

Rules, in order:
1. The host answers: Ready (Maintenance when spec.maintenance); a power-off asked by power saving is done
   only while nothing runs on it. A host that was Fenced or PoweredOff and answers again is simply back:
   it does not start its old VMs (the VM controller decides where VMs run, never the host).
2. It does not answer:
   - it was powered off on purpose (PoweringOff/PoweredOff) or fenced already: that is what it should be;
     a power-on asked by power saving powers it on (PoweringOn until it answers);
   - it never answered this controller and has no history: Connecting;
   - silent for less than the cluster's ``ha.hostGracePeriodSeconds``, counted from the first observation
     that found it silent (``status.silentSince``; a lost connection is noticed at once, a dead peer by
     libvirt's keepalive within 15 s): Unreachable, nothing is done (a host that answers again before the
     grace period ends goes back to Ready with no action taken);
   - silent longer: NotResponding, and fenced through its agent (FenceHost) unless fencing is disabled,
     it has no agent, or the last attempt failed recently. Then ``blocked`` says why its HA VMs are not
     restarted: a VM never runs on two hosts at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from reconcilers.conditions import cond
from reconcilers.domain import HostName, ObservedHost
from reconcilers.host.actions import FenceHost, PowerOffHost, PowerOnHost
from reconcilers.plan import Plan
from specs.host import Host, HostStatus
from specs.meta import Condition

PowerRequest = Literal["on", "off"]
FENCE_RETRY_S = 30.0  # a failed fence is tried again this long after it ended


@dataclass(frozen=True)
class HealthInputs:
    host: Host
    observed: ObservedHost | None  # this observation; None: not connected yet
    previous: HostStatus | None
    now: datetime
    last_answer: datetime | None  # when it last answered this controller (None: not since it started)
    watching_since: datetime  # when this controller started looking at the host
    grace_s: int  # cluster spec.ha.hostGracePeriodSeconds
    fencing: bool  # cluster spec.ha.fencing
    vms: int = 0  # domains running on it, as last listed
    power_request: PowerRequest | None = None  # asked by power saving (in memory)


@dataclass(frozen=True)
class HealthDecision:
    phase: str
    conditions: tuple[Condition, ...]
    silent_since: datetime | None = None
    plan: Plan = field(default_factory=Plan)
    blocked: str | None = None  # why the HA VMs of a NotResponding host are not restarted

    @property
    def fenced(self) -> bool:
        return self.phase == "Fenced"


def _agent(host: Host) -> str | None:
    pm = host.spec.powerManagement
    return pm.agent if pm is not None and pm.agent != "none" else None


def _t(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def plan_health(inputs: HealthInputs) -> HealthDecision:
    observed = inputs.observed
    if observed is not None and observed.ready:
        return _answering(inputs)
    return _silent(inputs, (observed.error if observed is not None else None) or "not connected yet")


def _answering(inputs: HealthInputs) -> HealthDecision:
    host = inputs.host
    name = HostName(host.metadata.name)
    agent = _agent(host)
    previous = inputs.previous.phase if inputs.previous is not None else None
    if inputs.power_request == "off" and agent is not None and inputs.vms == 0:
        return HealthDecision("PoweringOff", (cond("Ready", False, "PoweringOff", "power saving: the host is empty"),),
                              plan=Plan.of(PowerOffHost(name, agent, reason="power saving: empty host")))
    back = f"; it answers again after being {previous}" if previous in ("Fenced", "PoweredOff", "PoweringOn") else ""
    version = inputs.observed.libvirt_version if inputs.observed is not None else None
    if host.spec.maintenance:
        return HealthDecision("Maintenance", (cond("Ready", False, "Maintenance", "spec.maintenance is true" + back),))
    return HealthDecision("Ready", (cond("Ready", True, "Connected", f"libvirt {version}{back}"),))


def _silent(inputs: HealthInputs, error: str) -> HealthDecision:
    host = inputs.host
    name = HostName(host.metadata.name)
    prev = inputs.previous
    previous = prev.phase if prev is not None else None
    # Silence counts from the first observation that found the host silent (kept in status), not from its
    # last answer: that may be up to a heartbeat earlier, and a blip must get the whole grace period.
    since = (prev.silentSince if prev is not None and prev.silentSince else None) or inputs.now
    agent = _agent(host)
    if previous in ("PoweringOff", "PoweredOff"):
        if inputs.power_request == "on" and agent is not None:
            return HealthDecision("PoweringOn", (cond("Ready", False, "PoweringOn", "power saving needs it"),),
                                  since, Plan.of(PowerOnHost(name, agent, reason="power saving: capacity needed")))
        return HealthDecision("PoweredOff", (cond("Ready", False, "PoweredOff", "powered off by power saving"),),
                              since)
    if previous == "PoweringOn":
        return HealthDecision("PoweringOn", (cond("Ready", False, "PoweringOn", f"waiting for it to answer: {error}"),),
                              since)
    if previous == "Fenced":
        return HealthDecision("Fenced", (cond("Ready", False, "Fenced", f"fenced; no answer since {_t(since)}"),
                                         cond("Fenced", True, "Fenced", "powered off by its agent")), since)
    if previous in (None, "Connecting") and inputs.last_answer is None:
        return HealthDecision("Connecting", (cond("Ready", False, "Connecting", error),), since)
    silent_s = (inputs.now - since).total_seconds()
    if silent_s < inputs.grace_s:
        message = (f"no answer since {_t(since)} ({silent_s:.0f} s); NotResponding after "
                   f"{inputs.grace_s} s: {error}")
        return HealthDecision("Unreachable", (cond("Ready", False, "NoAnswer", message),), since)
    return _not_responding(inputs, since, error, agent)


def _not_responding(inputs: HealthInputs, since: datetime, error: str, agent: str | None) -> HealthDecision:
    host = inputs.host
    name = HostName(host.metadata.name)
    silent = f"no answer since {_t(since)} (grace {inputs.grace_s} s): {error}"
    ready = cond("Ready", False, "NotResponding", silent)
    if not inputs.fencing:
        why = f"fencing is disabled in cluster {host.spec.cluster} (spec.ha.fencing: false)"
        return HealthDecision("NotResponding", (ready, cond("Fenced", False, "FencingDisabled", why)), since,
                              blocked=why)
    if agent is None:
        why = "the host has no power management (spec.powerManagement) to fence it with"
        return HealthDecision("NotResponding", (ready, cond("Fenced", False, "NoPowerManagement", why)), since,
                              blocked=why)
    last = inputs.previous.power if inputs.previous is not None else None
    if last is not None and last.operation == "fence" and not last.ok:
        retry_at = last.started + timedelta(seconds=last.durationSeconds + FENCE_RETRY_S)
        if inputs.now < retry_at:
            why = (f"fencing through {agent} failed at {_t(last.started)} ({_last_error(last)}); next attempt at "
                   f"{_t(retry_at)}")
            return HealthDecision("NotResponding", (ready, cond("Fenced", False, "FenceFailed", why)), since,
                                  blocked=why)
    return HealthDecision("Fencing", (ready, cond("Fenced", False, "Fencing", f"fencing through {agent}")), since,
                          Plan.of(FenceHost(name, agent, reason=f"NotResponding: {silent}")),
                          blocked=f"fencing through {agent} is under way")


def _last_error(op: object) -> str:
    attempts = getattr(op, "attempts", ())
    failed = [a for a in attempts if not a.ok]
    last = failed[-1] if failed else None
    return f"{last.action} {last.error}: {last.message}" if last is not None else "not verified off"
