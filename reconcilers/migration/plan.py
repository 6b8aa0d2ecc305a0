"""Live migration planning: when a running VM moves, where to, and what to do with one that does not converge.

Pure: no await, no clock, no I/O. The controller passes what it knows as a frozen ``MigrationContext``:
the cluster's MigrationPolicy, a pending Migration request, the migration in flight for this VM (its
elapsed time comes from the controller's clock), and how many migrations each host sends or receives.

A running VM moves when
- a Migration object asks for it (to ``targetHost``, or to the host the scheduler picks), or
- its host is in maintenance (evacuation), or
- its host no longer satisfies its placement (allowedHosts, hostSelector, anti-affinity).

A migration is started (``MigrateDomain``) and then observed: while it runs, the planner plans nothing
else for the VM; past ``convergenceTimeoutSeconds`` it plans the policy's fallback once (``StartPostCopy``
or ``AbortMigration``). Capacity changes never trigger a move (that is the balancer's job), and a host
that does not answer is never a source or a target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from reconcilers.domain import DomainName, HostName, ObservedJob
from reconcilers.migration.actions import AbortMigration, MigrateDomain, MigrationSettings, StartPostCopy
from reconcilers.plan import Action
from reconcilers.scheduler import (
    PLACEMENT_RULES,
    ClusterPolicy,
    HostView,
    Request,
    host_view,
    place,
    reject_reason,
)
from specs.cluster import MigrationPolicy
from specs.meta import Condition

OBSERVE_EVERY_S = 0.5  # how often a running migration is observed (progress, convergence budget)
WAIT_S = 1.0  # how soon a migration held back by the concurrency limit is tried again

Outcome = Literal["started", "migrating", "waiting", "rejected", "satisfied"]


@dataclass(frozen=True)
class MigrationRequest:
    """A Migration object waiting to be carried out."""

    name: str
    target: HostName | None = None


@dataclass(frozen=True)
class InFlight:
    """A migration the controller started for this VM and has not seen finish."""

    source: HostName
    target: HostName
    elapsed_s: float
    migration: str | None = None
    post_copy: bool = False  # the switch to post-copy was requested
    aborting: bool = False  # an abort was requested


@dataclass(frozen=True)
class MigrationContext:
    policy: MigrationPolicy = field(default_factory=MigrationPolicy)
    request: MigrationRequest | None = None
    in_flight: InFlight | None = None
    busy: Mapping[HostName, int] = field(default_factory=dict)  # migrations in flight per host (either end)
    shared_storage: bool = False  # every disk of the VM is on a storage domain declared shared
    migrate_uris: Mapping[HostName, str] = field(default_factory=dict)  # data URI per target host
    libvirt_uris: Mapping[HostName, str] = field(default_factory=dict)  # each Host's spec.uri (peer to peer)
    retry_blocked: str | None = None  # an automatic move failed recently: why (no retry until it clears)


@dataclass(frozen=True)
class MoveDecision:
    outcome: Outcome
    actions: tuple[Action, ...] = ()
    condition: Condition | None = None
    target: HostName | None = None
    message: str = ""
    requeue_after: float | None = None

    @property
    def moving(self) -> bool:
        return self.outcome in ("started", "migrating")


def _cond(ok: bool, reason: str, message: str) -> Condition:
    return Condition(type="Migration", status="True" if ok else "False", reason=reason, message=message)


def move_reason(source: HostView | None, req: Request, policy: ClusterPolicy) -> str | None:
    """Why a VM running on ``source`` must leave it, or None. An unknown or silent host is left alone."""
    if source is None or not source.ready:
        return None
    if source.maintenance:
        return f"host {source.name} is in maintenance"
    why = reject_reason(source, req, policy, moving=True)
    if why is not None and why.code in PLACEMENT_RULES:  # capacity does not move a VM (the balancer's job)
        return f"host {source.name} {why.message}"
    return None


def settings_for(ctx: MigrationContext, target: HostName) -> MigrationSettings:
    p = ctx.policy
    return MigrationSettings(
        max_downtime_ms=p.maxDowntimeMs, bandwidth_mib_s=p.bandwidthMiBps, auto_converge=p.autoConverge,
        post_copy=p.postCopy, unsafe=ctx.shared_storage, migrate_uri=ctx.migrate_uris.get(target),
        peer_uri=ctx.libvirt_uris.get(target) if p.peerToPeer else None,
    )


def plan_in_flight(ctx: MigrationContext, domain: DomainName) -> MoveDecision:
    """A migration runs: observe it; past the convergence budget, take the fallback once."""
    job = ctx.in_flight
    assert job is not None
    p = ctx.policy
    actions: tuple[Action, ...] = ()
    note = f"{job.source} -> {job.target}, {job.elapsed_s:.0f} s"
    if job.elapsed_s >= p.convergenceTimeoutSeconds and not (job.post_copy or job.aborting):
        budget = f"not converged within {p.convergenceTimeoutSeconds} s"
        if p.fallback == "PostCopy" and p.postCopy:
            actions = (StartPostCopy(job.source, domain, reason=f"{budget}: switching to post-copy"),)
        else:
            actions = (AbortMigration(job.source, domain, reason=f"{budget}: fallback Abort"),)
    elif job.post_copy:
        note += ", post-copy"
    elif job.aborting:
        note += ", aborting"
    return MoveDecision("migrating", actions, _cond(True, "Migrating", note), job.target, note, OBSERVE_EVERY_S)


def plan_unowned(job: ObservedJob) -> MoveDecision:
    """libvirt migrates the domain but this controller did not start it (it restarted meanwhile, and a
    peer-to-peer migration goes on without it; or somebody ran `virsh migrate`): start nothing, watch it."""
    note = "a migration this controller did not start (or started before it restarted) is running"
    if job.time_elapsed_ms is not None:
        note += f" for {job.time_elapsed_ms / 1000:.0f} s"
    return MoveDecision("migrating", (), _cond(True, "Migrating", note), None, note, OBSERVE_EVERY_S)


def plan_move(
    ctx: MigrationContext,
    req: Request,
    domain: DomainName,
    source: HostName,
    hosts: Sequence[HostView],
    policy: ClusterPolicy,
) -> MoveDecision | None:
    """What to do about moving a VM that runs on ``source``; None when it stays and nothing asked."""
    if ctx.in_flight is not None:
        return plan_in_flight(ctx, domain)
    request = ctx.request
    why = move_reason(host_view(hosts, source), req, policy)
    if request is None and why is None:
        return None
    if request is not None:
        why = f"requested by Migration {request.name}"
        if request.target == source:
            return MoveDecision("satisfied", message=f"already running on {source}")
    target, refusal = _choose_target(request, req, source, hosts, policy)
    if target is None:
        if request is not None:
            return MoveDecision("rejected", condition=_cond(False, "Rejected", refusal), message=refusal)
        return MoveDecision("waiting", condition=_cond(False, "NoTarget", f"{why}, but {refusal}"),
                            message=refusal)
    if request is None and ctx.retry_blocked is not None:
        note = f"{why}; not retrying yet: {ctx.retry_blocked}"
        return MoveDecision("waiting", condition=_cond(False, "RetryLater", note), target=target, message=note)
    limit = ctx.policy.maxConcurrentPerHost
    full = [h for h in (source, target) if ctx.busy.get(h, 0) >= limit]
    if full:
        note = f"{why}; waiting: {', '.join(full)} already at maxConcurrentPerHost {limit}"
        return MoveDecision("waiting", condition=_cond(False, "ConcurrencyLimit", note), target=target,
                            message=note, requeue_after=WAIT_S)
    action = MigrateDomain(source, domain, target, settings_for(ctx, target),
                           migration=request.name if request else None, reason=why or "")
    return MoveDecision("started", (action,), _cond(True, "Started", f"{source} -> {target}: {why}"), target,
                        why or "", OBSERVE_EVERY_S)


def _choose_target(
    request: MigrationRequest | None, req: Request, source: HostName, hosts: Sequence[HostView],
    policy: ClusterPolicy,
) -> tuple[HostName | None, str]:
    if request is not None and request.target is not None:
        view = next((h for h in hosts if h.name == request.target), None)
        if view is None:
            return None, f"no host {request.target} in cluster {req.cluster}"
        refusal = reject_reason(view, req, policy, moving=True)
        if refusal is not None:
            return None, f"{request.target} cannot take {req.vm}: {refusal.message}"
        return view.name, ""
    placement = place(req, [h for h in hosts if h.name != source], policy)
    if placement.host is None:
        return None, f"no other host can take {req.vm}: {placement.explain()}"
    return placement.host, ""


__all__ = [
    "InFlight", "MigrationContext", "MigrationRequest", "MoveDecision", "move_reason", "plan_in_flight",
    "plan_move", "plan_unowned", "settings_for",
]
