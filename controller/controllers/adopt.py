"""`virtplane adopt host/NAME`: read foreign domains on one host and propose the objects that reproduce them.

Read-only: nothing is written to the store or to libvirt here. The API hands the request to
``adopt_preview`` (wired by the server); the CLI writes the returned objects as YAML for Git. Taking
ownership happens later, when those objects are applied: the VirtualMachine planner stamps the domain
(``StampOwner``) without redefining or restarting it (``reconcilers.vm.adopt``).
"""

from __future__ import annotations

from typing import Any

from controller.adapters.libvirt.codec import unrepresented
from controller.common.wire import HookError, spec_to_wire
from controller.runtime.context import Runtime
from reconcilers.domain import BlockSource, FileSource, HostName, ObservedDomain
from reconcilers.storage.backends import backend_for
from reconcilers.vm.adopt import AdoptContext, Adoption, plan_adoption
from specs.host import Host
from specs.network import Network
from specs.storage import StorageDomain

ADOPTABLE_KINDS = ("VirtualMachine", "Disk", "StorageDomain", "Network")


def _context(rt: Runtime, host: Host) -> AdoptContext:
    name = HostName(host.metadata.name)
    cluster = host.spec.cluster
    storage: dict[str, str] = {}
    for sd in rt.cache.specs["StorageDomain"].values():
        if not isinstance(sd, StorageDomain) or sd.spec.cluster != cluster:
            continue
        if sd.spec.hosts and name not in sd.spec.hosts:
            continue
        directory = backend_for(sd).image_dir(sd)
        if directory is not None:
            storage.setdefault(directory.rstrip("/") or "/", sd.metadata.name)
    networks: dict[tuple[str, str | None], str] = {}
    for net in rt.cache.specs["Network"].values():
        if not isinstance(net, Network) or net.spec.cluster != cluster:
            continue
        if net.spec.type == "user":
            networks.setdefault(("user", None), net.metadata.name)
        elif net.spec.type == "bridge":
            networks.setdefault(("bridge", net.spec.bridge), net.metadata.name)
        else:
            networks[("network", f"vp-{net.metadata.name}")] = net.metadata.name
    existing = {kind: frozenset(rt.cache.specs.get(kind, {})) for kind in ADOPTABLE_KINDS}
    runtime = rt.hosts.hosts.get(name)
    return AdoptContext(name, cluster, runtime.domain_type if runtime else "kvm", storage, networks, existing)


async def _adopt_one(rt: Runtime, base: AdoptContext, d: ObservedDomain) -> Adoption:
    conn = rt.hosts.connection(base.host)
    xml = await conn.domain_xml(d.name)
    problems = unrepresented(xml)
    capacities: dict[str, int] = {}
    if d.config is not None:
        paths = {x.target: x.source.path if isinstance(x.source, FileSource) else x.source.dev
                 for x in d.config.disks if isinstance(x.source, FileSource | BlockSource)}
        by_target = await conn.block_capacities(d.name, paths)
        capacities = {paths[target]: size for target, size in by_target.items()}
    ctx = AdoptContext(base.host, base.cluster, base.domain_type, base.storage, base.networks, base.existing,
                       capacities)
    return plan_adoption(d, ctx, problems)


async def adopt_preview(rt: Runtime, host: str, domains: list[str], everything: bool) -> dict[str, Any]:
    """The objects that reproduce the chosen foreign domains of ``host``, and the domains refused (why)."""
    obj = rt.cache.get("Host", host, Host)
    if obj is None:
        raise HookError(404, f"no Host named {host}")
    if not rt.hosts.ready(host):
        raise HookError(503, f"host {host} is not connected (not Ready); try again when it is")
    listed: dict[str, ObservedDomain] = {d.name: d for d in await rt.hosts.connection(HostName(host)).list_domains()}
    names = sorted(n for n, d in listed.items() if d.owner is None) if everything else list(dict.fromkeys(domains))
    base = _context(rt, obj)
    adopted: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for name in names:
        d = listed.get(name)
        result = Adoption(name, problems=(f"no domain named {name} on {host}",)) if d is None else (
            await _adopt_one(rt, base, d))
        if result.adoptable:
            adopted.append({"domain": name, "objects": [spec_to_wire(o) for o in result.objects]})
        else:
            refused.append({"domain": name, "problems": list(result.problems)})
    return {"host": host, "adopted": adopted, "refused": refused}
