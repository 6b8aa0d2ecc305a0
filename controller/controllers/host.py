"""Host controller: connect to the host's libvirt, observe it, list its domains, judge its health
(``reconcilers.host.health``), fence it when it stops answering past the grace period, restart its HA VMs
elsewhere once it is fenced (``controllers.ha``), carry out power-saving requests, write its status, and
subscribe to its lifecycle events (they reach the manager through ``Runtime.on_domain_event``).

Invariant: a VM never runs on two hosts. HA VMs are placed elsewhere only after the host's agent verified it
is off (phase Fenced, written to status before anything is restarted).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import anyio

from controller.adapters.libvirt.observe import DomainEvent
from controller.common.errors import ReconcileError
from controller.controllers.common import own_cluster, refuse_disallowed_paths
from controller.controllers.ha import announce_blocked, restart_ha_vms
from controller.controllers.power_actions import HANDLERS
from controller.controllers.vm import preview_moves
from controller.runtime.context import Runtime
from controller.runtime.hosts import HostRuntime
from controller.runtime.registry import Controller, Preview
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond
from reconcilers.domain import DomainName, HostName, ObservedDomain
from reconcilers.host.health import HealthDecision, HealthInputs, plan_health
from reconcilers.host.plan import host_status
from reconcilers.plan import Plan
from specs.cluster import Cluster, HaPolicy
from specs.confinement import path_problems
from specs.host import Host, HostStatus, PowerOperation
from specs.meta import Condition

log = logging.getLogger("virtplane.host")

HOST_RESYNC = 10.0  # seconds between observations of a healthy host (and state listings of its domains)
FULL_RELIST = 3600.0  # seconds between listings with every domain's XML (the safety net for lost events)
SILENT_RESYNC = 1.0  # ... of a host that does not answer (the grace period is counted at this resolution)
OBSERVE_TIMEOUT = 5.0  # a libvirtd that does not answer within this is not answering (hung)
HEARTBEAT_WRITE = timedelta(seconds=60)
ACCEL_ANNOTATION = "virtplane.io/accelerator"
AFTER_POWER = {("fence", True): "Fenced", ("fence", False): "NotResponding", ("power-off", True): "PoweredOff",
               ("power-off", False): "Ready", ("power-on", True): "PoweringOn", ("power-on", False): "PoweredOff"}


def ha_policy(rt: Runtime, host: Host) -> HaPolicy:
    cluster = rt.cache.get("Cluster", host.spec.cluster, Cluster)
    return cluster.spec.ha if cluster is not None else HaPolicy()


async def _observe(rt: Runtime, runtime: HostRuntime) -> None:
    """Ask libvirt (bounded in time); the domains' states every resync period."""
    now = rt.clock()
    if runtime.watching_since is None:
        runtime.watching_since = now
    runtime.observed = await runtime.conn.observe_host(timeout=OBSERVE_TIMEOUT)
    if not runtime.ready:
        runtime.pools.clear()
        runtime.networks.clear()
        return
    runtime.last_answer = now
    if not runtime.last_listed or rt.hosts.now() - runtime.last_listed >= HOST_RESYNC * 0.8:
        # In between (a VM controller asked for a fresh count) the host cache is current: events keep it.
        with anyio.move_on_after(OBSERVE_TIMEOUT * 2):
            await _list_domains(rt, runtime)


async def _list_domains(rt: Runtime, runtime: HostRuntime) -> None:
    """Every domain's state in one call; XML only for what is new, changed or dirty — or for every domain
    after a (re)connection (events were lost meanwhile) and every FULL_RELIST seconds. Whatever differs
    from the cache reaches the controllers as a "listed" event, as if libvirt had sent one."""
    cache = runtime.domains
    generation = runtime.conn.generation
    full = cache.listed_generation != generation or rt.hosts.now() - cache.full_listed_at >= FULL_RELIST
    known = cache.needs_xml(full)
    since = cache.stamp()
    listing = await runtime.conn.list_domain_states(lambda name, summary: known.get(name) != summary)
    changed = cache.apply_listing(listing, since)
    runtime.last_listed = rt.hosts.now()
    if full:
        cache.listed_generation, cache.full_listed_at = generation, runtime.last_listed
    for name in sorted(changed):
        rt.on_domain_event(DomainEvent(runtime.name, DomainName(name), "listed", "changed"))


async def reconcile_host(rt: Runtime, name: str) -> Result | None:
    host = rt.cache.get("Host", name, Host)
    if host is None:
        await rt.hosts.remove(name)
        rt.power.done(name)
        return None
    if path_problems(host, rt.policy, {}):
        await rt.hosts.remove(name)  # never connect to a socket or with a key the operator did not allow
        await refuse_disallowed_paths(rt, host, "host-controller")
    runtime = rt.hosts.ensure(name, host.spec.uri)
    if not runtime.conn.is_test:
        # A host whose KVM cannot run guests (the lab's kvm_pvm) says so: virtplane.io/accelerator: tcg.
        runtime.domain_type = "qemu" if host.metadata.annotations.get(ACCEL_ANNOTATION) == "tcg" else "kvm"
        runtime.conn.notify_on_loss(lambda: rt.queue.add(("Host", name)))
    was_ready = runtime.ready
    await _observe(rt, runtime)
    prev_any = rt.cache.status["Host"].get(name)
    prev = prev_any if isinstance(prev_any, HostStatus) else None
    ha = ha_policy(rt, host)
    running = [d for d in runtime.domains.values() if d.active] if runtime.ready else []
    now = rt.clock()
    decision = plan_health(HealthInputs(
        host, runtime.observed, prev, now, runtime.last_answer, runtime.watching_since or now,
        ha.hostGracePeriodSeconds, ha.fencing, vms=len(running), power_request=rt.power.get(name)))
    power = prev.power if prev is not None else None
    if decision.plan:
        await _write(rt, host, runtime, decision.phase, decision, power, running)  # the intent, before acting
        power = await _power(rt, host, decision.plan)
        phase = AFTER_POWER[(power.operation, power.ok)]
        if power.operation != "fence":
            rt.power.done(name)
    else:
        phase = decision.phase
    await _write(rt, host, runtime, phase, decision, power, running)
    if was_ready != runtime.ready:
        rt.notify("Host", name, "ready", was_ready, runtime.ready)
    before = prev.phase if prev is not None else None
    if phase != before and phase not in ("Fenced", "PoweredOff", "PoweringOn"):  # those have their own events
        ready = next((c for c in decision.conditions if c.type == "Ready"), None)
        await rt.emit(host, f"Host{phase}", (ready.message if ready else "") + (f" (was {before})" if before else ""),
                      warning=phase in ("Unreachable", "NotResponding", "Fencing"), source="host-controller")
    if runtime.ready:
        rt.ha.announced.pop(name, None)  # a later outage is announced again
    if phase == "Fenced":
        await restart_ha_vms(rt, host)
    elif decision.blocked is not None and phase == "NotResponding":
        await announce_blocked(rt, host, decision.blocked)
    await _subscribe(rt, runtime)
    return Result(requeue_after=HOST_RESYNC if runtime.ready or phase in ("Fenced", "PoweredOff") else SILENT_RESYNC)


async def _power(rt: Runtime, host: Host, plan: Plan) -> PowerOperation:
    """Run the fence / power action; its handler reports the operation (it does not raise for a failed
    agent: a failure is an outcome recorded in status)."""
    result = await rt.executor.execute(plan, rt)
    if result.error is not None:
        raise result.error
    op = result.outcomes[0].value
    assert isinstance(op, PowerOperation)
    reason = {"fence": ("HostFenced", "FenceFailed"), "power-off": ("HostPoweredOff", "PowerOffFailed"),
              "power-on": ("HostPoweringOn", "PowerOnFailed")}[op.operation][0 if op.ok else 1]
    steps = ", ".join(f"{a.action} {'ok' if a.ok else a.error} ({a.durationSeconds:.1f} s)" for a in op.attempts)
    await rt.emit(host, reason, f"{op.operation} through its agent {'verified ' + op.state if op.ok else 'failed'} "
                                f"in {op.durationSeconds:.1f} s: {steps}", warning=not op.ok, source="host-controller")
    return op


async def _write(rt: Runtime, host: Host, runtime: HostRuntime, phase: str, decision: HealthDecision,
                 power: PowerOperation | None, running: Sequence[ObservedDomain]) -> None:
    name = host.metadata.name
    prev_any = rt.cache.status["Host"].get(name)
    prev = prev_any if isinstance(prev_any, HostStatus) else None
    now = rt.clock()
    cpus = sum((d.live.vcpus if d.live else 0) for d in running)
    memory = sum((d.live.memory_kib * 1024 if d.live else 0) for d in running)
    base = host_status(host, runtime.observed, cpus, memory, len(running), now, prev)
    conditions = decision.conditions
    if phase != decision.phase:  # the power action's outcome decided the phase
        conditions = _after_power_conditions(phase, power)
    status = base.model_copy(update={
        "phase": phase, "conditions": rt.with_times(conditions, prev), "silentSince": decision.silent_since,
        "power": power})
    stale = prev is None or prev.lastHeartbeat is None or now - prev.lastHeartbeat > HEARTBEAT_WRITE
    await rt.write_status("Host", name, status, force=stale and runtime.ready)


def _after_power_conditions(phase: str, op: PowerOperation | None) -> tuple[Condition, ...]:
    detail = f"{op.operation} {'verified ' + op.state if op and op.ok else 'failed'}" if op else ""
    if phase == "Fenced":
        return (cond("Ready", False, "Fenced", "fenced: " + detail), cond("Fenced", True, "Fenced", detail))
    if phase == "NotResponding":
        return (cond("Ready", False, "NotResponding", detail), cond("Fenced", False, "FenceFailed", detail))
    return (cond("Ready", phase == "Ready", phase, detail),)


async def _subscribe(rt: Runtime, runtime: HostRuntime) -> None:
    """Lifecycle events of a Ready host, once per connection."""
    if not runtime.ready or runtime.events_subscribed:
        return

    def forward(event: DomainEvent) -> None:
        if runtime.domains.consume(event, rt.hosts.now()):
            rt.counters["expected_events"] += 1  # caused by our own define/start, already recorded
            return
        runtime.domains.mark_dirty(event.domain)
        rt.on_domain_event(event)

    runtime.events_subscribed = True
    try:
        await runtime.conn.watch_events(forward)
    except ReconcileError as e:
        runtime.events_subscribed = False
        log.warning("host %s: no lifecycle events: %s", runtime.name, e)


async def preview_host(rt: Runtime, change: Change) -> Preview:
    """A host going into maintenance (or losing a label): the migrations that move its VMs away."""
    host = change.after if isinstance(change.after, Host) else None
    if host is None or change.action == "deleted":
        return Preview(Plan(), note="its VMs are no longer managed on it; the host itself is untouched")
    return Preview(await preview_moves(rt, HostName(host.metadata.name), host))


def host_in_sync(rt: Runtime, name: str) -> bool:
    """The periodic resync owes nothing to a Ready host whose own next observation is already scheduled
    (it requeues itself every HOST_RESYNC seconds)."""
    runtime = rt.hosts.hosts.get(HostName(name))
    host = rt.cache.get("Host", name, Host)
    return (host is not None and runtime is not None and runtime.ready and runtime.uri == host.spec.uri
            and rt.queue.scheduled(("Host", name)))


CONTROLLER = Controller(kind="Host", reconcile=reconcile_host, scope=own_cluster, plan=preview_host,
                        handlers=HANDLERS, in_sync=host_in_sync)
