"""Planning for Host, StorageDomain, Network and Disk. Pure: no await, no clock, no I/O.

libvirt names: a StorageDomain ``shared`` is the dir pool ``vp-shared`` on every host that sees it; a
Network ``lan`` of type nat/isolated is the libvirt network ``vp-lan``; a Disk ``web-root`` is the volume
``web-root.qcow2`` (or ``.img`` for raw) in its domain's pool.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from reconcilers.actions import CreateVolume, DeleteVolume, EnsureNetwork, EnsurePool, ResizeVolume
from reconcilers.domain import (
    DirPoolConfig,
    HostName,
    ImageFormat,
    Ipv4Config,
    NetworkConfig,
    NetworkName,
    ObservedHost,
    ObservedVolume,
    PoolName,
    VolumeConfig,
    VolumeName,
)
from reconcilers.plan import Action, Plan
from reconcilers.snapshot import CopySnapshotDisk, SnapshotName
from specs.disk import Disk
from specs.host import Host, HostResources, HostStatus
from specs.meta import Condition
from specs.network import Network
from specs.storage import StorageDomain


def _cond(type_: str, ok: bool, reason: str, message: str = "") -> Condition:
    return Condition(type=type_, status="True" if ok else "False", reason=reason, message=message)


# ---------------------------------------------------------------- hosts


def host_status(host: Host, observed: ObservedHost | None, allocated_cpus: int, allocated_memory: int,
                vms: int, now: datetime, previous: HostStatus | None) -> HostStatus:
    """Status from one observation. ``now`` is injected; lastHeartbeat moves only when the host answered."""
    if host.spec.maintenance and observed is not None and observed.ready:
        phase, cond = "Maintenance", _cond("Ready", False, "Maintenance", "spec.maintenance is true")
    elif observed is not None and observed.ready:
        phase, cond = "Ready", _cond("Ready", True, "Connected", f"libvirt {observed.libvirt_version}")
    else:
        error = observed.error if observed is not None else "not connected yet"
        phase, cond = "NotResponding", _cond("Ready", False, "NotResponding", error or "")
    answered = observed is not None and observed.ready
    prev = previous or HostStatus()
    return HostStatus(
        observedGeneration=host.metadata.generation,
        phase=phase,
        conditions=(cond,),
        capacity=HostResources(cpus=observed.cpus or 0, memory=observed.memory_bytes or 0)
        if answered and observed is not None else prev.capacity,
        allocation=HostResources(cpus=allocated_cpus, memory=allocated_memory),
        libvirtVersion=observed.libvirt_version if answered and observed is not None else prev.libvirtVersion,
        qemuVersion=observed.hypervisor_version if answered and observed is not None else prev.qemuVersion,
        hostname=observed.hostname if answered and observed is not None else prev.hostname,
        lastHeartbeat=now if answered else prev.lastHeartbeat,
        vms=vms,
    )


# ---------------------------------------------------------------- storage domains


def pool_name(domain: str) -> PoolName:
    return PoolName(f"vp-{domain}")


def storage_path(sd: StorageDomain) -> str | None:
    """Directory of the images as hosts see it, for the types served by a dir pool."""
    spec = sd.spec
    if spec.type == "posix" and spec.posix is not None:
        return spec.posix.path
    if spec.type == "local" and spec.local is not None:
        return spec.local.path
    return None


def storage_hosts(sd: StorageDomain, hosts: Sequence[Host]) -> list[Host]:
    spec = sd.spec
    chosen = []
    for h in hosts:
        if h.spec.cluster != spec.cluster:
            continue
        if spec.hosts and h.metadata.name not in spec.hosts:
            continue
        if any(h.metadata.labels.get(k) != v for k, v in spec.hostSelector.items()):
            continue
        chosen.append(h)
    return chosen


def plan_storage(sd: StorageDomain, ready_hosts: Sequence[HostName],
                 pools: Mapping[HostName, DirPoolConfig | None]) -> Plan:
    path = storage_path(sd)
    if path is None:
        return Plan()
    want = DirPoolConfig(pool_name(sd.metadata.name), path)
    return Plan(tuple(
        EnsurePool(h, want, reason="pool missing" if pools.get(h) is None else "pool differs")
        for h in ready_hosts if pools.get(h) != want
    ))


# ---------------------------------------------------------------- networks


def network_config(net: Network) -> NetworkConfig | None:
    """The libvirt network we define, or None when hosts need none (user, existing bridge)."""
    spec = net.spec
    if spec.type not in ("nat", "isolated"):
        return None
    ipv4 = None
    if spec.ipv4 is not None:
        cidr = spec.ipv4.cidr
        network, _, prefix = cidr.partition("/")
        gateway = spec.ipv4.gateway or _first_host(network)
        ipv4 = Ipv4Config(address=f"{gateway}/{prefix}",
                          dhcp_start=spec.ipv4.dhcp.start if spec.ipv4.dhcp else None,
                          dhcp_end=spec.ipv4.dhcp.end if spec.ipv4.dhcp else None)
    return NetworkConfig(
        name=NetworkName(f"vp-{net.metadata.name}"),
        forward="nat" if spec.type == "nat" else "none",
        bridge=spec.bridge,
        mtu=spec.mtu,
        ipv4=ipv4,
    )


def _first_host(network: str) -> str:
    parts = network.split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts)


def plan_network(net: Network, ready_hosts: Sequence[HostName],
                 observed: Mapping[HostName, NetworkConfig | None]) -> Plan:
    want = network_config(net)
    if want is None:
        return Plan()
    actions = []
    for h in ready_hosts:
        seen = observed.get(h)
        if seen is None or _comparable(seen, want) != want:
            actions.append(EnsureNetwork(h, want, reason="network missing" if seen is None else "network differs"))
    return Plan(tuple(actions))


def _comparable(seen: NetworkConfig, want: NetworkConfig) -> NetworkConfig:
    """libvirt picks a bridge name when we leave it unset; that is not a difference."""
    if want.bridge is None:
        return NetworkConfig(seen.name, seen.forward, None, seen.mtu, seen.ipv4)
    return seen


# ---------------------------------------------------------------- disks


def volume_name(disk: Disk) -> VolumeName:
    ext = "img" if disk.spec.effective_format == "raw" else "qcow2"
    return VolumeName(f"{disk.metadata.name}.{ext}")


@dataclass(frozen=True)
class DiskSourceInfo:
    """What a clone or import reads: a path on the hosts, its format and size."""

    path: str
    format: str | None
    capacity_bytes: int | None
    snapshot: str | None = None  # read the content at this internal snapshot of ``path``


def _relative(path: str, base: str) -> str:
    return path if posixpath.isabs(path) else posixpath.join(base, path)


def source_info(disk: Disk, base: str, other: Mapping[str, DiskSourceInfo],
                snapshots: Mapping[str, tuple[str, ...]] | None = None) -> DiskSourceInfo | str | None:
    """Where the initial content comes from. Returns an error message (str) when it cannot be found yet.
    ``snapshots``: the Ready Snapshots, each with the Disks it holds."""
    src = disk.spec.source
    if src is None or src.empty is not None:
        return None
    if src.clone is not None:
        if src.clone.disk is not None:
            found = other.get(src.clone.disk)
            return found if found is not None else f"source disk {src.clone.disk} is not ready"
        assert src.clone.image is not None
        return DiskSourceInfo(_relative(src.clone.image, base), None, None)
    if src.import_ is not None:
        return DiskSourceInfo(_relative(src.import_.path, base), src.import_.format, None)
    assert src.snapshot is not None
    held = (snapshots or {}).get(src.snapshot.snapshot)
    if held is None:
        return f"snapshot {src.snapshot.snapshot} is not ready"
    if src.snapshot.disk not in held:
        return f"snapshot {src.snapshot.snapshot} does not hold disk {src.snapshot.disk} (it holds {', '.join(held)})"
    found = other.get(src.snapshot.disk)
    if found is None:
        return f"disk {src.snapshot.disk} of snapshot {src.snapshot.snapshot} is not ready"
    return DiskSourceInfo(found.path, found.format, found.capacity_bytes, snapshot=src.snapshot.snapshot)


def plan_disk(disk: Disk, host: HostName, path: str, observed: ObservedVolume | None,
              source: DiskSourceInfo | None) -> Plan:
    """Create, grow, or (when deleted with reclaimPolicy Delete) remove the image of one Disk."""
    sd = disk.spec.storageDomain
    assert sd is not None
    pool, name = pool_name(sd), volume_name(disk)
    if disk.metadata.deletionTimestamp is not None:
        if observed is not None and (disk.spec.reclaimPolicy or "Delete") == "Delete":
            return Plan.of(DeleteVolume(host, pool, name, reason="Disk deleted (reclaimPolicy Delete)"))
        return Plan()
    size = disk.spec.size_bytes
    fmt = disk.spec.effective_format or "qcow2"
    if observed is None:
        actions: list[Action] = []
        clone = disk.spec.source.clone if disk.spec.source is not None else None
        if source is not None and source.snapshot is not None:
            capacity = max(size or 0, source.capacity_bytes or 0)
            actions.append(CopySnapshotDisk(host, pool, VolumeConfig(name, capacity, fmt), source.path,
                                            SnapshotName(source.snapshot), path,
                                            reason=f"copy of {source.path} at snapshot {source.snapshot}"))
        elif source is not None and clone is not None and clone.mode == "overlay":
            capacity = max(size or 0, source.capacity_bytes or 0)
            vol = VolumeConfig(name, capacity, "qcow2", source.path, _fmt(source.format))
            actions.append(CreateVolume(host, pool, vol, reason=f"overlay clone of {source.path}"))
        elif source is not None:
            capacity = max(size or 0, source.capacity_bytes or 0)
            actions.append(CreateVolume(host, pool, VolumeConfig(name, capacity, fmt), source_path=source.path,
                                        source_format=source.format, reason=f"copy of {source.path}"))
        else:
            actions.append(CreateVolume(host, pool, VolumeConfig(name, size or 0, fmt), reason="new empty disk"))
        return Plan(tuple(actions))
    if size is not None and size > observed.capacity_bytes:
        return Plan.of(ResizeVolume(host, pool, name, size, reason=f"grow to {disk.spec.size}"))
    return Plan()


def _fmt(text: str | None) -> ImageFormat | None:
    if text == "qcow2":
        return "qcow2"
    if text == "raw":
        return "raw"
    return None
