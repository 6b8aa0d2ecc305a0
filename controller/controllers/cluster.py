"""Cluster controller: status (hosts ready, VMs running, load spread, which replica leads it) and, every
``scheduling.balancing.intervalSeconds``, the cluster's balancing and power-saving policies
(``controller.controllers.cluster_policy``). ``diff`` of a Cluster shows what those policies would do now."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from controller.controllers.cluster_policy import HANDLERS, PolicyPlan, plan_policies
from controller.controllers.common import cluster_hosts, on_host_readiness
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.ha import PolicyClock
from controller.runtime.registry import Controller, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.cluster.actions import RequestMigration, RequestPower
from reconcilers.conditions import cond
from reconcilers.plan import Plan
from specs.cluster import Cluster, ClusterStatus
from specs.meta import Condition, Resource
from specs.vm import VirtualMachine, VirtualMachineStatus

RESYNC = 10.0  # seconds: VM counts are refreshed this often


async def reconcile_cluster(rt: Runtime, name: str) -> Result | None:
    cluster = rt.cache.get("Cluster", name, Cluster)
    if cluster is None:
        return None
    hosts = cluster_hosts(rt, name)
    ready = [h for h in hosts if rt.hosts.ready(h.metadata.name)]
    running = sum(
        1
        for vm in rt.cache.all("VirtualMachine", VirtualMachine)
        if vm.spec.cluster == name
        and isinstance(s := rt.cache.status["VirtualMachine"].get(vm.metadata.name), VirtualMachineStatus)
        and s.phase == "Running"
    )
    phase = "NoHosts" if not hosts else ("Ready" if len(ready) == len(hosts) else "Degraded")
    now = rt.clock()
    interval = cluster.spec.scheduling.balancing.intervalSeconds
    last = rt.policy_clock.last_run.setdefault(name, now)  # the first run waits one interval
    policies = plan_policies(rt, cluster, rt.policy_clock, now)
    due = now - last >= timedelta(seconds=interval)
    if due:
        rt.policy_clock.last_run[name] = now
        if policies.plan:
            await _carry_out(rt, cluster, policies.plan)
    elif policies.power.powering_on and policies.power.actions:
        await _carry_out(rt, cluster, policies.power.plan)  # a VM waits for room: do not wait for the interval
    status = ClusterStatus(
        observedGeneration=cluster.metadata.generation,
        phase=phase,
        hostsTotal=len(hosts),
        hostsReady=len(ready),
        vmsRunning=running,
        leader=rt.identity,
        loadSpreadPercent=round(policies.spread),
        conditions=rt.with_times(
            (cond("Ready", bool(ready), phase, f"{len(ready)}/{len(hosts)} hosts Ready"),
             _balanced(cluster, policies)),
            rt.cache.status["Cluster"].get(name),
        ),
    )
    await rt.write_status("Cluster", name, status)
    left = interval - (rt.clock() - rt.policy_clock.last_run[name]).total_seconds()
    return Result(requeue_after=max(1.0, min(RESYNC, left)))


def _balanced(cluster: Cluster, policies: PolicyPlan) -> Condition:
    s = cluster.spec.scheduling
    if s.policy == "PowerSaving":
        return cond("Balanced", True, "PowerSaving", policies.power.note or "packing VMs (power saving)")
    if s.policy == "None" or not s.balancing.enabled:
        return cond("Balanced", True, "Off", f"balancing is off (policy {s.policy})")
    within = policies.spread <= s.balancing.thresholdPercent
    return cond("Balanced", within, "WithinThreshold" if within else "Imbalanced",
                f"load spread {policies.spread:.0f} points (threshold {s.balancing.thresholdPercent})"
                + (f": {policies.balance.note}" if policies.balance.note and not within else ""))


async def _carry_out(rt: Runtime, cluster: Cluster, plan: Plan) -> None:
    result = await rt.executor.execute(plan, rt)
    for action in result.done:
        if isinstance(action, RequestMigration):
            await rt.emit(cluster, "BalancerMigration" if action.why == "balance" else "Evacuating",
                          f"{action.target()}: {action.reason}", source="cluster-controller")
        elif isinstance(action, RequestPower):
            await rt.emit(cluster, "PowerOnRequested" if action.state == "on" else "PowerOffRequested",
                          f"host/{action.host}: {action.reason}", source="cluster-controller")
    if result.error is not None:
        raise result.error


async def preview_cluster(rt: Runtime, change: Change) -> Preview:
    """A policy change: what the balancer and power saving would do now under the new spec."""
    cluster = change.after if isinstance(change.after, Cluster) else None
    if cluster is None:
        return Preview(Plan(), note="hosts and VMs of the cluster stay as they are")
    clock = PolicyClock(dict(rt.policy_clock.last_run), dict(rt.policy_clock.empty_since))
    policies = plan_policies(rt, cluster, clock, rt.clock())
    return Preview(policies.plan, note=None if policies.plan else policies.note or None)


def cluster_scope(cache: Cache, obj: Resource) -> str:
    return obj.metadata.name


def _waiting_for_room(rt: Runtime, vm: str, before: Any, after: Any) -> Iterable[str]:
    """A VM that found no host, in a power-saving cluster: power saving may have to power a host on."""
    scheduled = next((c for c in getattr(after, "conditions", ()) if c.type == "Scheduled"), None)
    if scheduled is None or scheduled.reason != "Unschedulable":
        return ()
    obj = rt.cache.get("VirtualMachine", vm, VirtualMachine)
    cluster = rt.cache.get("Cluster", obj.spec.cluster, Cluster) if obj is not None else None
    return (cluster.metadata.name,) if cluster is not None and cluster.spec.scheduling.policy == "PowerSaving" else ()


CONTROLLER = Controller(
    kind="Cluster",
    reconcile=reconcile_cluster,
    scope=cluster_scope,
    watches=(Watch("Host", "ready", on_host_readiness("Cluster")),
             Watch("VirtualMachine", "status", _waiting_for_room)),
    plan=preview_cluster,
    handlers=HANDLERS,
)
