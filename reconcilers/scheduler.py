"""Placement: filters, then weights by cluster policy, then a deterministic tie-break. Pure.

The chosen host goes into the VM's status, never into its spec.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from reconcilers.domain import HostName

Policy = Literal["EvenlyDistributed", "PowerSaving", "None"]


@dataclass(frozen=True)
class HostView:
    """One host as the scheduler sees it: capacity from libvirt, allocation from placed VMs."""

    name: HostName
    cluster: str
    ready: bool
    maintenance: bool
    labels: Mapping[str, str]
    cpus: int
    memory_bytes: int
    allocated_cpus: int = 0
    allocated_memory_bytes: int = 0
    vm_count: int = 0
    groups: frozenset[str] = frozenset()  # anti-affinity / affinity groups of VMs placed here
    storage_domains: frozenset[str] | None = None  # the domains the host reaches; None: unknown / all
    storage_notes: Mapping[str, str] = field(default_factory=dict)  # why it does not reach a domain
    networks: frozenset[str] | None = None


class HostViews(Sequence[HostView]):
    """The hosts a plan may consider. Naming them and looking one up are cheap; a subclass may build the
    whole list only when a plan needs it (placing a VM, choosing a migration target)."""

    def __init__(self, views: Sequence[HostView] = ()) -> None:
        self._views = tuple(views)

    def all(self) -> tuple[HostView, ...]:
        return self._views

    def names(self) -> frozenset[HostName]:
        return frozenset(h.name for h in self.all())

    def get(self, name: HostName) -> HostView | None:
        return next((h for h in self.all() if h.name == name), None)

    def __getitem__(self, index: int) -> HostView:  # type: ignore[override]
        return self.all()[index]

    def __len__(self) -> int:
        return len(self.all())

    def __iter__(self) -> Iterator[HostView]:
        return iter(self.all())


def host_names(hosts: Sequence[HostView]) -> frozenset[HostName]:
    return hosts.names() if isinstance(hosts, HostViews) else frozenset(h.name for h in hosts)


def host_view(hosts: Sequence[HostView], name: HostName) -> HostView | None:
    return hosts.get(name) if isinstance(hosts, HostViews) else next((h for h in hosts if h.name == name), None)


@dataclass(frozen=True)
class Request:
    vm: str
    cluster: str
    cpus: int
    memory_bytes: int
    allowed_hosts: tuple[str, ...] = ()
    host_selector: Mapping[str, str] = field(default_factory=dict)
    affinity_group: str | None = None
    anti_affinity_group: str | None = None
    storage_domains: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ClusterPolicy:
    policy: Policy = "EvenlyDistributed"
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0


class Reject(StrEnum):
    """Why a host cannot take a VM: the typed code decisions are made on (the message is for people)."""

    OTHER_CLUSTER = "OtherCluster"
    NOT_READY = "NotReady"
    MAINTENANCE = "Maintenance"
    NOT_ALLOWED = "NotAllowed"  # placement.allowedHosts
    LABEL_MISSING = "LabelMissing"  # placement.hostSelector
    ANTI_AFFINITY = "AntiAffinity"
    NO_STORAGE = "NoStorage"
    NO_NETWORK = "NoNetwork"
    CPU = "Cpu"
    MEMORY = "Memory"


# Rejections that say the VM must not run on the host at all (as opposed to: there is no room for it).
PLACEMENT_RULES = frozenset({Reject.MAINTENANCE, Reject.NOT_ALLOWED, Reject.LABEL_MISSING, Reject.ANTI_AFFINITY})


@dataclass(frozen=True)
class Rejection:
    code: Reject
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Placement:
    host: HostName | None
    rejected: tuple[tuple[HostName, Rejection], ...] = ()  # (host, why) for every filtered-out host

    def explain(self) -> str:
        if not self.rejected:
            return "no hosts in the cluster"
        return "; ".join(f"{h}: {why.message}" for h, why in self.rejected)


def reject_reason(host: HostView, req: Request, policy: ClusterPolicy, *, moving: bool = False) -> Rejection | None:
    """Why ``host`` cannot take the VM, or None when it can. ``moving``: the VM already counts elsewhere."""
    if host.cluster != req.cluster:
        return Rejection(Reject.OTHER_CLUSTER, f"in cluster {host.cluster!r}, not {req.cluster!r}")
    if not host.ready:
        return Rejection(Reject.NOT_READY, "not Ready")
    if host.maintenance:
        return Rejection(Reject.MAINTENANCE, "in maintenance")
    if req.allowed_hosts and host.name not in req.allowed_hosts:
        return Rejection(Reject.NOT_ALLOWED, "not in placement.allowedHosts")
    for key, value in req.host_selector.items():
        if host.labels.get(key) != value:
            return Rejection(Reject.LABEL_MISSING, f"label {key}={value} not present")
    if req.anti_affinity_group and req.anti_affinity_group in host.groups:
        return Rejection(Reject.ANTI_AFFINITY, f"runs a VM of anti-affinity group {req.anti_affinity_group!r}")
    if host.storage_domains is not None and not req.storage_domains <= host.storage_domains:
        missing = sorted(req.storage_domains - host.storage_domains)
        why = "; ".join(f"{m} ({host.storage_notes[m]})" if m in host.storage_notes else m for m in missing)
        return Rejection(Reject.NO_STORAGE, f"cannot reach storage {why}")
    if host.networks is not None and not req.networks <= host.networks:
        return Rejection(Reject.NO_NETWORK, f"lacks network {', '.join(sorted(req.networks - host.networks))}")
    cpu_limit = int(host.cpus * policy.cpu_overcommit)
    if host.allocated_cpus + req.cpus > cpu_limit:
        return Rejection(Reject.CPU, f"CPU {host.allocated_cpus}+{req.cpus} > {cpu_limit} "
                                     f"(overcommit {policy.cpu_overcommit:g})")
    mem_limit = int(host.memory_bytes * policy.memory_overcommit)
    if host.allocated_memory_bytes + req.memory_bytes > mem_limit:
        return Rejection(Reject.MEMORY, f"memory {(host.allocated_memory_bytes + req.memory_bytes) >> 20} MiB > "
                                        f"{mem_limit >> 20} MiB")
    return None


def _weight(host: HostView, req: Request, policy: ClusterPolicy) -> tuple[float, ...]:
    """Smaller is better."""
    affinity = 0 if req.affinity_group and req.affinity_group in host.groups else 1
    mem_used = (host.allocated_memory_bytes + req.memory_bytes) / max(host.memory_bytes, 1)
    cpu_used = (host.allocated_cpus + req.cpus) / max(host.cpus, 1)
    if policy.policy == "PowerSaving":
        # Pack: prefer the busiest host that still fits, so others can be emptied and powered off.
        return (affinity, -mem_used, -cpu_used)
    if policy.policy == "EvenlyDistributed":
        return (affinity, mem_used, cpu_used, host.vm_count)
    return (affinity,)


def place(req: Request, hosts: Sequence[HostView], policy: ClusterPolicy) -> Placement:
    rejected: list[tuple[HostName, Rejection]] = []
    fits: list[HostView] = []
    for host in hosts:
        why = reject_reason(host, req, policy)
        if why is None:
            fits.append(host)
        else:
            rejected.append((host.name, why))
    if not fits:
        return Placement(None, tuple(rejected))
    best = min(fits, key=lambda h: (*_weight(h, req, policy), h.name))
    return Placement(best.name, tuple(rejected))
