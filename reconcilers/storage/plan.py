"""StorageDomain planning: which hosts see a domain, and the pool each of them must have. Pure.

What a storage type needs is in ``reconcilers.storage.backends`` (the one place per type).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconcilers.domain import DirPoolConfig, HostName, ObservedPool
from reconcilers.plan import Plan
from reconcilers.storage.actions import EnsurePool
from reconcilers.storage.backends import backend_for
from specs.host import Host
from specs.storage import StorageDomain


def storage_hosts(sd: StorageDomain, hosts: Sequence[Host]) -> list[Host]:
    """The hosts of the domain's cluster that see it (spec.hosts, spec.hostSelector)."""
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
                 pools: Mapping[HostName, ObservedPool | None]) -> Plan:
    """An EnsurePool for each ready host whose pool is missing, inactive (not mounted) or differs from what
    the backend wants."""
    want = backend_for(sd).pool(sd)
    if want is None:
        return Plan()
    actions = []
    for h in ready_hosts:
        seen = pools.get(h)
        if seen is None:
            actions.append(EnsurePool(h, want, reason="pool missing"))
        elif seen.config != want:
            actions.append(EnsurePool(h, want, reason="pool differs"))
        elif not seen.active:
            why = "pool inactive" if isinstance(want, DirPoolConfig) else "pool inactive (not mounted)"
            actions.append(EnsurePool(h, want, reason=why))
    return Plan(tuple(actions))
