"""Turning raw libvirt answers (state codes, XML, job stats, event codes) into ``Observed*`` values.

Blocking helpers here take a ``virConnect`` / ``virDomain`` and are meant to run inside a worker thread
(see :mod:`controller.adapters.libvirt.connection`); the table lookups are pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import libvirt

from controller.adapters.libvirt.codec import CodecError, parse_domain, parse_owner
from reconcilers.domain import (
    DomainConfig,
    DomainName,
    DomainState,
    DomainUUID,
    HostName,
    ObservedDomain,
    ObservedJob,
)

_STATES: dict[int, DomainState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def _constant_names(prefix: str, exclude: tuple[str, ...] = ()) -> dict[int, str]:
    """{value: lower-case suffix} of the libvirt constants PREFIX_SUFFIX (VIR_DOMAIN_RUNNING_BOOTED...)."""
    names: dict[int, str] = {}
    for attr in dir(libvirt):
        if attr.startswith(prefix) and not any(attr.startswith(prefix + e) for e in exclude):
            value = getattr(libvirt, attr)
            if isinstance(value, int) and not attr.endswith("_LAST"):
                names.setdefault(value, attr[len(prefix) :].lower())
    return names


_REASONS: dict[DomainState, dict[int, str]] = {
    "nostate": _constant_names("VIR_DOMAIN_NOSTATE_"),
    "running": _constant_names("VIR_DOMAIN_RUNNING_"),
    "blocked": _constant_names("VIR_DOMAIN_BLOCKED_"),
    "paused": _constant_names("VIR_DOMAIN_PAUSED_"),
    "shutdown": _constant_names("VIR_DOMAIN_SHUTDOWN_"),
    "shutoff": _constant_names("VIR_DOMAIN_SHUTOFF_"),
    "crashed": _constant_names("VIR_DOMAIN_CRASHED_"),
    "pmsuspended": _constant_names("VIR_DOMAIN_PMSUSPENDED_", exclude=("DISK_",)),
}

_EVENTS: dict[int, str] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_EVENT_DETAILS: dict[int, dict[int, str]] = {
    code: _constant_names(f"VIR_DOMAIN_EVENT_{name.upper()}_") for code, name in _EVENTS.items()
}
_JOB_TYPES = _constant_names("VIR_DOMAIN_JOB_", exclude=("OPERATION", "STATS", "DATA", "TIME", "DOWNTIME"))
_JOB_OPERATIONS = _constant_names("VIR_DOMAIN_JOB_OPERATION_")


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """A libvirt domain event as delivered to subscribers: ``event`` "started", "stopped", ...,
    "device-removed"; ``detail`` "booted", "migrated", "destroyed", ... or the removed device's alias."""

    host: HostName
    domain: DomainName
    event: str
    detail: str


@dataclass(frozen=True, slots=True)
class DomainSummary:
    """What one bulk state listing says of a domain, without its XML."""

    state: DomainState
    reason: str
    persistent: bool


FetchPredicate = Callable[[DomainName, DomainSummary], bool]


@dataclass(frozen=True, slots=True)
class DomainListing:
    """One pass over a host: every domain's summary, and the full observation of those asked for."""

    states: dict[DomainName, DomainSummary]
    observed: dict[DomainName, ObservedDomain]


def state_name(state: int) -> DomainState:
    return _STATES.get(state, "nostate")


def reason_name(state: DomainState, reason: int) -> str:
    return _REASONS[state].get(reason, f"unknown-{reason}")


def lifecycle_event(host: HostName, domain: str, event: int, detail: int) -> DomainEvent:
    name = _EVENTS.get(event, f"event-{event}")
    return DomainEvent(host, DomainName(domain), name, _EVENT_DETAILS.get(event, {}).get(detail, str(detail)))


def version_string(packed: int) -> str:
    """libvirt's packed version (major * 1,000,000 + minor * 1,000 + release) as "9.0.0"."""
    return f"{packed // 1_000_000}.{packed // 1000 % 1000}.{packed % 1000}"


def job_from_stats(stats: dict[str, Any]) -> ObservedJob | None:
    kind = _JOB_TYPES.get(int(stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)), "unknown")
    if kind == "none":
        return None

    def opt(key: str) -> int | None:
        value = stats.get(key)
        return int(value) if value is not None else None

    operation = stats.get("operation")
    return ObservedJob(
        type=kind,
        operation=_JOB_OPERATIONS.get(int(operation)) if operation is not None else None,
        data_processed=opt(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED),
        data_remaining=opt(libvirt.VIR_DOMAIN_JOB_DATA_REMAINING),
        data_total=opt(libvirt.VIR_DOMAIN_JOB_DATA_TOTAL),
        time_elapsed_ms=opt(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED),
        downtime_ms=opt(libvirt.VIR_DOMAIN_JOB_DOWNTIME),
    )


def after_define(host: HostName, config: DomainConfig, previous: ObservedDomain | None) -> ObservedDomain:
    """What libvirt reports of a domain just defined as ``config`` (as libvirt stored it): a new one is
    shut off (reason unknown); a redefined one keeps its state and live definition."""
    if previous is not None:
        return replace(previous, uuid=config.uuid or previous.uuid, persistent=True, config=config,
                       owner=config.owner, parse_error=None)
    assert config.uuid is not None, "libvirt gives every defined domain a UUID"
    shutoff: DomainState = "shutoff"
    return ObservedDomain(
        host=host, name=DomainName(config.name), uuid=config.uuid, state=shutoff,
        reason=reason_name(shutoff, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN), persistent=True, config=config,
        live=None, owner=config.owner,
    )  # fmt: skip


def after_start(previous: ObservedDomain, live: DomainConfig) -> ObservedDomain:
    """What libvirt reports of a domain whose ``create()`` just returned with ``live`` as its live XML."""
    running: DomainState = "running"
    return replace(previous, state=running, reason=reason_name(running, libvirt.VIR_DOMAIN_RUNNING_BOOTED),
                   live=live, job=None)


def observe_domain_blocking(
    host: HostName,
    dom: libvirt.virDomain,
    state: int,
    reason: int,
    persistent: bool,
    count: Callable[[str], None],
    job: Callable[[libvirt.virDomain], ObservedJob | None],
) -> ObservedDomain:
    """Build an ObservedDomain from one domain handle (blocking: XMLDesc calls). ``count(op)`` is told of
    every libvirt call; ``job(dom)`` fetches job stats (or None)."""
    name = DomainName(dom.name())
    st = state_name(state)
    count("XMLDesc")
    inactive_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    active = st != "shutoff"  # "crashed" stays active only with on_crash=preserve
    live_xml = None
    if active:
        count("XMLDesc")
        live_xml = dom.XMLDesc(0)
    try:
        config, owner = parse_domain(inactive_xml)
        live = parse_domain(live_xml)[0] if live_xml is not None else None
    except CodecError as exc:
        try:
            owner = parse_owner(inactive_xml)
        except CodecError:
            owner = None
        return ObservedDomain(
            host=host, name=name, uuid=DomainUUID(dom.UUIDString()), state=st, reason=reason_name(st, reason),
            persistent=persistent, config=None, live=None, owner=owner, parse_error=str(exc),
        )  # fmt: skip
    return ObservedDomain(
        host=host,
        name=name,
        uuid=config.uuid or DomainUUID(dom.UUIDString()),
        state=st,
        reason=reason_name(st, reason),
        persistent=persistent,
        config=config,
        live=live,
        owner=owner,
        job=job(dom) if active else None,
    )
