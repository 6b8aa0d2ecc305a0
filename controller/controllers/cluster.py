"""Cluster controller: status only (hosts ready, VMs running, which replica leads it)."""

from __future__ import annotations

from controller.controllers.common import cluster_hosts, on_host_readiness
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.registry import Controller, Watch
from controller.runtime.workqueue import Result
from reconcilers.conditions import cond
from specs.cluster import Cluster, ClusterStatus
from specs.meta import Resource
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
    status = ClusterStatus(
        observedGeneration=cluster.metadata.generation,
        phase=phase,
        hostsTotal=len(hosts),
        hostsReady=len(ready),
        vmsRunning=running,
        leader=rt.identity,
        conditions=rt.with_times(
            (cond("Ready", bool(ready), phase, f"{len(ready)}/{len(hosts)} hosts Ready"),),
            rt.cache.status["Cluster"].get(name),
        ),
    )
    await rt.write_status("Cluster", name, status)
    return Result(requeue_after=RESYNC)


def cluster_scope(cache: Cache, obj: Resource) -> str:
    return obj.metadata.name


CONTROLLER = Controller(
    kind="Cluster",
    reconcile=reconcile_cluster,
    scope=cluster_scope,
    watches=(Watch("Host", "ready", on_host_readiness("Cluster")),),
)
