"""Small helpers the controllers share: ready hosts, and watch mappers for a host's readiness."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from controller.common.errors import SpecInvalid
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.registry import GLOBAL, Mapper
from reconcilers.domain import HostName
from specs.confinement import path_problems
from specs.host import Host
from specs.meta import Resource
from specs.storage import StorageDomain


def ready_hosts(rt: Runtime, hosts: Sequence[Host]) -> list[HostName]:
    """The hosts among ``hosts`` that this replica is connected to and that answer."""
    return [HostName(h.metadata.name) for h in hosts if rt.hosts.ready(h.metadata.name)]


def cluster_hosts(rt: Runtime, cluster: str) -> list[Host]:
    return [h for h in rt.cache.all("Host", Host) if h.spec.cluster == cluster]


def phase_changed(before: Any, after: Any) -> bool:
    return getattr(before, "phase", None) != getattr(after, "phase", None)


def on_host_readiness(kind: str) -> Mapper:
    """A mapper for ``Watch("Host", "ready", ...)``: every ``kind`` object in the host's cluster, when this
    replica starts or stops reaching the host."""

    def objects(rt: Runtime, host: str, before: Any, after: Any) -> Iterable[str]:
        if bool(before) == bool(after):
            return ()
        spec = rt.cache.specs["Host"].get(host)
        cluster = getattr(spec.spec, "cluster", None) if spec is not None else None
        if cluster is None:
            return ()
        if kind == "Cluster":
            return (cluster,)
        return [n for n, obj in rt.cache.specs[kind].items() if getattr(obj.spec, "cluster", None) == cluster]

    return objects


def own_cluster(cache: Cache, obj: Resource) -> str:
    """Scope of a kind with ``spec.cluster``."""
    return str(getattr(obj.spec, "cluster", None) or GLOBAL)


async def refuse_disallowed_paths(rt: Runtime, obj: Resource, source: str) -> None:
    """SpecInvalid (after a Warning event) when ``obj`` names a host path the server's policy does not
    allow: the API refuses such specs at apply; this catches one stored before (or planted in etcd)."""
    domains = {sd.metadata.name: sd for sd in rt.cache.all("StorageDomain", StorageDomain)}
    problems = path_problems(obj, rt.policy, domains)
    if not problems:
        return
    message = "; ".join(f"{field}: {text}" for field, text in problems)
    await rt.emit(obj, "HostPathRefused", message, warning=True, source=source)
    raise SpecInvalid(f"{obj.kind}/{obj.metadata.name} not acted on: {message}")
