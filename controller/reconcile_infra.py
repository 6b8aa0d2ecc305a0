"""Controllers for Cluster, Host, StorageDomain, Network, Disk and VirtualMachinePool."""

from __future__ import annotations

import logging
from datetime import timedelta

from controller.executor import execute
from controller.libvirt.errors import ReconcileError, TransientError
from controller.reconcile_snapshot import copy_actions, execute_copy, ready_snapshot_disks
from controller.runtime import Runtime
from controller.workqueue import Result
from reconcilers.domain import DirPoolConfig, HostName, NetworkConfig
from reconcilers.infra import (
    DiskSourceInfo,
    host_status,
    network_config,
    plan_disk,
    plan_network,
    plan_storage,
    pool_name,
    source_info,
    storage_hosts,
    storage_path,
    volume_name,
)
from reconcilers.pool import POOL_LABEL, plan_pool
from specs.cluster import Cluster, ClusterStatus
from specs.disk import Disk, DiskStatus
from specs.host import Host, HostStatus
from specs.meta import Condition
from specs.network import Network, NetworkStatus
from specs.pool import VirtualMachinePool, VirtualMachinePoolStatus
from specs.storage import StorageDomain, StorageDomainStatus
from specs.vm import VirtualMachine, VirtualMachineStatus

log = logging.getLogger("virtplane.infra")

HOST_RESYNC = 10.0  # seconds between observations of a host
HEARTBEAT_WRITE = timedelta(seconds=60)
DISK_FINALIZER = "virtplane.io/volume"
ACCEL_ANNOTATION = "virtplane.io/accelerator"


def _cond(type_: str, ok: bool, reason: str, message: str = "") -> Condition:
    return Condition(type=type_, status="True" if ok else "False", reason=reason, message=message)


async def reconcile_cluster(rt: Runtime, name: str) -> Result | None:
    cluster = rt.cache.get("Cluster", name, Cluster)
    if cluster is None:
        return None
    hosts = [h for h in rt.cache.all("Host", Host) if h.spec.cluster == name]
    ready = [h for h in hosts if (r := rt.hosts.hosts.get(HostName(h.metadata.name))) and r.ready]
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
            (_cond("Ready", bool(ready), phase, f"{len(ready)}/{len(hosts)} hosts Ready"),),
            rt.cache.status["Cluster"].get(name),
        ),
    )
    await rt.write_status("Cluster", name, status)
    return Result(requeue_after=HOST_RESYNC)


async def reconcile_host(rt: Runtime, name: str) -> Result | None:
    host = rt.cache.get("Host", name, Host)
    if host is None:
        await rt.hosts.remove(name)
        return None
    runtime = rt.hosts.ensure(name, host.spec.uri)
    if not runtime.conn.is_test:
        # A host whose KVM cannot run guests (the lab's kvm_pvm) says so: virtplane.io/accelerator: tcg.
        runtime.domain_type = "qemu" if host.metadata.annotations.get(ACCEL_ANNOTATION) == "tcg" else "kvm"
    was_ready = runtime.ready
    runtime.observed = await runtime.conn.observe_host()
    if runtime.ready and (not runtime.last_listed or rt.hosts.now() - runtime.last_listed >= HOST_RESYNC * 0.8):
        # A full listing every resync period; in between (a VM controller asked for a fresh count) the
        # domains its reconciles observed are current enough.
        domains = await runtime.conn.list_domains()
        runtime.domains = {d.name: d for d in domains}
        runtime.last_listed = rt.hosts.now()
    else:
        runtime.pools.clear()
        runtime.networks.clear()
    running = [d for d in runtime.domains.values() if d.active]
    cpus = sum((d.live.vcpus if d.live else 0) for d in running)
    memory = sum((d.live.memory_kib * 1024 if d.live else 0) for d in running)
    previous = rt.cache.status["Host"].get(name)
    prev = previous if isinstance(previous, HostStatus) else None
    now = rt.clock()
    status = host_status(host, runtime.observed, cpus, memory, len(running), now, prev)
    status = status.model_copy(update={"conditions": rt.with_times(status.conditions, prev)})
    stale = prev is None or prev.lastHeartbeat is None or now - prev.lastHeartbeat > HEARTBEAT_WRITE
    if not rt_status_equal(rt, "Host", name, status) or (stale and runtime.ready):
        rt.cache.status["Host"].pop(name, None) if stale and runtime.ready else None
        await rt.write_status("Host", name, status)
    if was_ready != runtime.ready:
        _enqueue_cluster(rt, host.spec.cluster)
        if not runtime.ready:
            await rt.emit(
                host, "HostNotResponding", runtime.observed.error or "no answer", warning=True, source="host-controller"
            )
        else:
            await rt.emit(host, "HostReady", f"libvirt {runtime.observed.libvirt_version}", source="host-controller")
    return Result(requeue_after=HOST_RESYNC)


def rt_status_equal(rt: Runtime, kind: str, name: str, status: HostStatus) -> bool:
    from controller.runtime import _comparable

    prev = rt.cache.status[kind].get(name)
    return prev is not None and _comparable(prev) == _comparable(status)


def _enqueue_cluster(rt: Runtime, cluster: str) -> None:
    for kind in ("StorageDomain", "Network", "VirtualMachine", "Cluster"):
        for obj in rt.cache.specs[kind].values():
            spec = obj.spec
            if getattr(spec, "cluster", cluster) == cluster or (kind == "Cluster" and obj.metadata.name == cluster):
                rt.queue.add((kind, obj.metadata.name))


def _ready_hosts(rt: Runtime, hosts: list[Host]) -> list[HostName]:
    return [
        HostName(h.metadata.name)
        for h in hosts
        if (r := rt.hosts.hosts.get(HostName(h.metadata.name))) is not None and r.ready
    ]


async def reconcile_storage(rt: Runtime, name: str) -> Result | None:
    sd = rt.cache.get("StorageDomain", name, StorageDomain)
    if sd is None:
        return None
    hosts = storage_hosts(sd, rt.cache.all("Host", Host))
    ready = _ready_hosts(rt, hosts)
    prev = rt.cache.status["StorageDomain"].get(name)
    if storage_path(sd) is None:
        status = StorageDomainStatus(
            observedGeneration=sd.metadata.generation,
            phase="Unavailable",
            conditions=rt.with_times(
                (
                    _cond(
                        "Ready",
                        False,
                        "Unsupported",
                        f"type {sd.spec.type} is not served by this version yet (posix, local are)",
                    ),
                ),
                prev,
            ),
        )
        await rt.write_status("StorageDomain", name, status)
        return None
    pools = {h: rt.hosts.hosts[h].pools.get(pool_name(name)) for h in ready}
    plan = plan_storage(sd, ready, pools)
    failed: list[str] = []
    for action in plan:
        result = await execute(type(plan)((action,)), rt.hosts.connections())
        host = action.host  # type: ignore[attr-defined]
        if result.ok:
            rt.hosts.hosts[host].pools[pool_name(name)] = action.pool  # type: ignore[attr-defined]
        else:
            failed.append(host)
            await rt.emit(sd, "PoolFailed", f"{host}: {result.error}", warning=True, source="storage-controller")
    ok_hosts = tuple(sorted(h for h in ready if h not in failed))
    phase = (
        "Ready"
        if ok_hosts and not failed and len(ok_hosts) == len(hosts)
        else ("Degraded" if ok_hosts else "Unavailable")
    )
    status = StorageDomainStatus(
        observedGeneration=sd.metadata.generation,
        phase=phase,
        conditions=rt.with_times(
            (_cond("Ready", bool(ok_hosts), phase, f"active on {len(ok_hosts)}/{len(hosts)} hosts"),), prev
        ),
        readyHosts=ok_hosts,
        failedHosts=tuple(sorted(set(h.metadata.name for h in hosts) - set(ok_hosts))),
    )
    if await rt.write_status("StorageDomain", name, status):
        for disk in rt.cache.all("Disk", Disk):
            if disk.spec.storageDomain == name:
                rt.queue.add(("Disk", disk.metadata.name))
    return Result(requeue=True) if failed else None


async def reconcile_network(rt: Runtime, name: str) -> Result | None:
    net = rt.cache.get("Network", name, Network)
    if net is None:
        return None
    hosts = [h for h in rt.cache.all("Host", Host) if h.spec.cluster == net.spec.cluster]
    ready = _ready_hosts(rt, hosts)
    want = network_config(net)
    observed: dict[HostName, NetworkConfig | None] = {
        h: rt.hosts.hosts[h].networks.get(want.name) if want else None for h in ready
    }
    failed = []
    for action in plan_network(net, ready, observed):
        result = await execute(type(plan_network(net, [], {}))((action,)), rt.hosts.connections())
        host = action.host  # type: ignore[attr-defined]
        if result.ok:
            rt.hosts.hosts[host].networks[action.network.name] = action.network  # type: ignore[attr-defined]
        else:
            failed.append(host)
            await rt.emit(net, "NetworkFailed", f"{host}: {result.error}", warning=True, source="network-controller")
    ok = tuple(sorted(h for h in ready if h not in failed))
    phase = "Ready" if ok and len(ok) == len(hosts) else ("Degraded" if ok else "Unavailable")
    prev = rt.cache.status["Network"].get(name)
    status = NetworkStatus(
        observedGeneration=net.metadata.generation,
        phase=phase,
        conditions=rt.with_times((_cond("Ready", bool(ok), phase, f"on {len(ok)}/{len(hosts)} hosts"),), prev),
        bridge=net.spec.bridge,
        readyHosts=ok,
        failedHosts=tuple(sorted({h.metadata.name for h in hosts} - set(ok))),
    )
    if await rt.write_status("Network", name, status):
        for vm in rt.cache.all("VirtualMachine", VirtualMachine):
            if any(n.network == name for n in vm.spec.nics):
                rt.queue.add(("VirtualMachine", vm.metadata.name))
    return Result(requeue=True) if failed else None


async def reconcile_disk(rt: Runtime, name: str) -> Result | None:
    disk = rt.cache.get("Disk", name, Disk)
    if disk is None:
        return None
    prev_any = rt.cache.status["Disk"].get(name)
    prev = prev_any if isinstance(prev_any, DiskStatus) else DiskStatus()
    attached = tuple(
        sorted(
            vm.metadata.name
            for vm in rt.cache.all("VirtualMachine", VirtualMachine)
            if any(a.disk == name for a in vm.spec.disks)
        )
    )
    if disk.spec.lun is not None:
        iscsi = disk.spec.lun.iscsi
        path = disk.spec.lun.blockPath or (f"iscsi://{iscsi.portal}/{iscsi.iqn}/{iscsi.lun}" if iscsi else "")
        status = DiskStatus(
            observedGeneration=disk.metadata.generation,
            phase="Ready",
            path=path,
            conditions=rt.with_times((_cond("Ready", True, "Lun"),), prev),
            attachedTo=attached,
        )
        await rt.write_status("Disk", name, status)
        return None
    deleting = disk.metadata.deletionTimestamp is not None
    if not deleting and DISK_FINALIZER not in disk.metadata.finalizers:
        disk = await rt.store.add_finalizer("Disk", name, DISK_FINALIZER)  # type: ignore[assignment]
    sd_name = disk.spec.storageDomain or ""
    sd = rt.cache.get("StorageDomain", sd_name, StorageDomain)
    sd_status = rt.cache.status["StorageDomain"].get(sd_name)
    ready_hosts = [
        HostName(h)
        for h in (sd_status.readyHosts if isinstance(sd_status, StorageDomainStatus) else ())
        if (r := rt.hosts.hosts.get(HostName(h))) is not None and r.ready
    ]
    base = storage_path(sd) if sd is not None else None
    if sd is None or base is None or not ready_hosts:
        if deleting:
            await rt.store.remove_finalizer("Disk", name, DISK_FINALIZER)
            return None
        status = DiskStatus(
            observedGeneration=disk.metadata.generation,
            phase="Pending",
            conditions=rt.with_times(
                (_cond("Ready", False, "StorageNotReady", f"storage domain {sd_name} is not ready"),), prev
            ),
            attachedTo=attached,
        )
        await rt.write_status("Disk", name, status)
        return None
    host = ready_hosts[0]
    conn = rt.hosts.hosts[host].conn
    pool = pool_name(sd_name)
    vols = {v.name: v for v in await conn.list_volumes(pool)}
    observed = vols.get(volume_name(disk))
    others = _source_infos(rt)
    source = source_info(disk, base, others, ready_snapshot_disks(rt))
    # The source matters only to create the image: an existing or deleted one never waits for it (the
    # base of an overlay waits for the overlay to go, so the overlay must not wait for the base).
    if isinstance(source, str) and observed is None and not deleting:
        status = DiskStatus(
            observedGeneration=disk.metadata.generation,
            phase="Pending",
            conditions=rt.with_times((_cond("Ready", False, "SourceNotReady", source),), prev),
            attachedTo=attached,
        )
        await rt.write_status("Disk", name, status)
        return None
    overlays = overlay_clones_of(rt, name)
    if deleting and (attached or overlays):
        why = [f"attached to {', '.join(attached)}; detach it first"] if attached else []
        if overlays:
            why.append(f"backing image of overlay clone {', '.join(overlays)}; delete the clone first")
        status = prev.model_copy(
            update={
                "phase": "Deleting",
                "conditions": rt.with_times((_cond("Ready", False, "InUse", "; ".join(why)),), prev),
            }
        )
        await rt.write_status("Disk", name, status)
        return Result(requeue_after=2.0)  # the VM may be going away too: look again soon
    plan = plan_disk(disk, host, base, observed, None if isinstance(source, str) else source)
    plan, copies = copy_actions(plan)
    for copy in copies:
        await execute_copy(copy)
        await rt.emit(disk, "PlanExecuted", f"{copy.name} {copy.target()}", source="disk-controller")
    if copies:
        vols = {v.name: v for v in await conn.list_volumes(pool)}
        observed = vols.get(volume_name(disk))
    if plan:
        result = await execute(plan, rt.hosts.connections())
        if not result.ok:
            await rt.emit(
                disk,
                "VolumeFailed",
                f"{result.failed.name if result.failed else ''}: {result.error}",
                warning=True,
                source="disk-controller",
            )
            assert result.error is not None
            raise result.error
        await rt.emit(
            disk, "PlanExecuted", ", ".join(f"{a.name} {a.target()}" for a in result.done), source="disk-controller"
        )
        vols = {v.name: v for v in await conn.list_volumes(pool)}
        observed = vols.get(volume_name(disk))
    if deleting:
        await rt.store.remove_finalizer("Disk", name, DISK_FINALIZER)
        return None
    if observed is None:
        raise TransientError(f"volume {volume_name(disk)} not visible in {pool} on {host} yet", retry_after=1.0)
    status = DiskStatus(
        observedGeneration=disk.metadata.generation,
        phase="Ready",
        path=observed.path,
        capacity=observed.capacity_bytes,
        allocation=observed.allocation_bytes,
        format=observed.format,
        backingPath=observed.backing_path,
        attachedTo=attached,
        conditions=rt.with_times((_cond("Ready", True, "Created", f"in {pool} on {host}"),), prev),
        correlationId=disk.metadata.correlationId,
    )
    if await rt.write_status("Disk", name, status):
        for vm_name in attached:
            rt.queue.add(("VirtualMachine", vm_name))
        for other in rt.cache.all("Disk", Disk):
            src = other.spec.source
            if src is not None and src.clone is not None and src.clone.disk == name:
                rt.queue.add(("Disk", other.metadata.name))
    return None


def overlay_clones_of(rt: Runtime, name: str) -> tuple[str, ...]:
    """Disks that are qcow2 overlays on Disk ``name``: it must stay while they exist (even while deleting)."""
    return tuple(
        sorted(
            other.metadata.name
            for other in rt.cache.all("Disk", Disk)
            if (src := other.spec.source) is not None
            and src.clone is not None
            and src.clone.disk == name
            and src.clone.mode == "overlay"
        )
    )


def _source_infos(rt: Runtime) -> dict[str, DiskSourceInfo]:
    infos = {}
    for name, status in rt.cache.status["Disk"].items():
        if isinstance(status, DiskStatus) and status.phase == "Ready" and status.path:
            infos[name] = DiskSourceInfo(status.path, status.format, status.capacity)
    return infos


async def reconcile_pool(rt: Runtime, name: str) -> Result | None:
    pool = rt.cache.get("VirtualMachinePool", name, VirtualMachinePool)
    if pool is None:
        return None
    base = rt.cache.get("Disk", pool.spec.baseDisk, Disk)
    sd = pool.spec.storageDomain or (base.spec.storageDomain if base else None)
    prev = rt.cache.status["VirtualMachinePool"].get(name)
    if sd is None:
        status = VirtualMachinePoolStatus(
            observedGeneration=pool.metadata.generation,
            conditions=rt.with_times(
                (_cond("Ready", False, "BaseDiskMissing", f"disk {pool.spec.baseDisk} not found"),), prev
            ),
        )
        await rt.write_status("VirtualMachinePool", name, status)
        return None
    existing = [
        vm.metadata.name
        for vm in rt.cache.all("VirtualMachine", VirtualMachine)
        if vm.metadata.labels.get(POOL_LABEL) == name
    ]
    plan = plan_pool(pool, sd, existing)
    if plan.apply:
        result = await rt.store.apply(list(plan.apply), correlation_id=pool.metadata.correlationId or "pool")
        changed = [c for c in result.changes if c.action != "unchanged"]
        if changed:
            await rt.emit(
                pool,
                "ReplicasUpdated",
                f"{len(changed)} replica object(s) created or updated",
                source="pool-controller",
            )
    for kind, obj_name in plan.delete:
        await rt.store.delete(kind, obj_name, correlation_id=pool.metadata.correlationId or "pool")
    if plan.delete:
        await rt.emit(pool, "ScaledDown", f"deleted {len(plan.delete) // 2} replica(s)", source="pool-controller")
    replicas = [vm for vm in existing if vm in {r.metadata.name for r in plan.apply}]
    ready = sum(
        1
        for vm in replicas
        if isinstance(s := rt.cache.status["VirtualMachine"].get(vm), VirtualMachineStatus) and s.phase == "Running"
    )
    status = VirtualMachinePoolStatus(
        observedGeneration=pool.metadata.generation,
        replicas=len(replicas),
        readyReplicas=ready,
        phase="Ready" if ready == pool.spec.replicas else "Scaling",
        conditions=rt.with_times(
            (_cond("Ready", ready == pool.spec.replicas, "Replicas", f"{ready}/{pool.spec.replicas} running"),), prev
        ),
    )
    await rt.write_status("VirtualMachinePool", name, status)
    return None


__all__ = [
    "DirPoolConfig",
    "ReconcileError",
    "reconcile_cluster",
    "reconcile_disk",
    "reconcile_host",
    "reconcile_network",
    "reconcile_pool",
    "reconcile_storage",
]
