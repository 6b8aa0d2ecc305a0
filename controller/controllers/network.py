"""Network controller: the libvirt network on every host of the cluster (nat/isolated types)."""

from __future__ import annotations

from controller.controllers.common import cluster_hosts, on_host_readiness, own_cluster, ready_hosts
from controller.runtime.context import Runtime
from controller.runtime.registry import Controller, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond
from reconcilers.domain import HostName, NetworkConfig
from reconcilers.network.actions import DeleteNetwork, EnsureNetwork
from reconcilers.network.plan import network_config, plan_network
from reconcilers.plan import Plan
from specs.host import Host
from specs.network import Network, NetworkStatus


def _plan(rt: Runtime, net: Network) -> tuple[Plan, list[Host], list[HostName]]:
    hosts = cluster_hosts(rt, net.spec.cluster)
    ready = ready_hosts(rt, hosts)
    want = network_config(net)
    observed: dict[HostName, NetworkConfig | None] = {
        h: rt.hosts.hosts[h].networks.get(want.name) if want else None for h in ready
    }
    return plan_network(net, ready, observed), hosts, ready


async def reconcile_network(rt: Runtime, name: str) -> Result | None:
    net = rt.cache.get("Network", name, Network)
    if net is None:
        return None
    plan, hosts, ready = _plan(rt, net)
    failed = []
    for action in plan:  # one host's failure must not keep the others from getting the network
        result = await rt.executor.execute(Plan.of(action), rt)
        if not result.ok:
            assert isinstance(action, EnsureNetwork)
            failed.append(action.host)
            await rt.emit(net, "NetworkFailed", f"{action.host}: {result.error}", warning=True,
                          source="network-controller")
    ok = tuple(sorted(h for h in ready if h not in failed))
    phase = "Ready" if ok and len(ok) == len(hosts) else ("Degraded" if ok else "Unavailable")
    prev = rt.cache.status["Network"].get(name)
    status = NetworkStatus(
        observedGeneration=net.metadata.generation,
        phase=phase,
        conditions=rt.with_times((cond("Ready", bool(ok), phase, f"on {len(ok)}/{len(hosts)} hosts"),), prev),
        bridge=net.spec.bridge,
        readyHosts=ok,
        failedHosts=tuple(sorted({h.metadata.name for h in hosts} - set(ok))),
    )
    await rt.write_status("Network", name, status)
    return Result(requeue=True) if failed else None


async def _ensure(a: EnsureNetwork, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).ensure_network(a.network)
    rt.hosts.hosts[a.host].networks[a.network.name] = a.network


async def _delete(a: DeleteNetwork, rt: Runtime) -> None:
    await rt.hosts.connection(a.host).delete_network(a.network)
    rt.hosts.hosts[a.host].networks.pop(a.network, None)


async def preview_network(rt: Runtime, change: Change) -> Preview:
    net = change.after if isinstance(change.after, Network) else None
    if net is None or net.metadata.deletionTimestamp is not None:
        return Preview(Plan(), note="the libvirt networks stay on the hosts")
    plan, _, ready = _plan(rt, net)
    if not ready and network_config(net) is not None:
        return Preview(plan, note=f"waiting: no Ready host in cluster {net.spec.cluster} yet")
    return Preview(plan)


CONTROLLER = Controller(
    kind="Network",
    reconcile=reconcile_network,
    scope=own_cluster,
    watches=(Watch("Host", "ready", on_host_readiness("Network")),),
    plan=preview_network,
    handlers={EnsureNetwork: _ensure, DeleteNetwork: _delete},
)
