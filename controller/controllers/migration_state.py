"""Migration state shared by the two controllers that touch it: the VirtualMachine controller (the only mover:
it reads the oldest open request as a planner input, starts, observes and collects migrations) and the
Migration controller (it reports them). The in-flight registry itself is ``Runtime.migrations``.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from types import MappingProxyType

from controller.adapters.libvirt.migration import MigrationJob
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from reconcilers.domain import HostName
from reconcilers.migration.actions import MigrationSettings
from reconcilers.migration.plan import MigrationContext, MigrationRequest, MoveDecision
from specs.cluster import Cluster, MigrationPolicy
from specs.host import Host
from specs.migration import Migration, MigrationStatus
from specs.storage import StorageDomain
from specs.vm import VirtualMachine

TERMINAL = ("Succeeded", "Failed", "Aborted")
RETRY_BACKOFF_S = 60.0  # an automatic move that failed is not retried sooner
LAB_MIGRATE_URI = "tcp://127.0.0.1"


# ---------------------------------------------------------------- inputs for the VM planner


def open_request(rt: Runtime, vm: str) -> MigrationRequest | None:
    """The oldest Migration for ``vm`` that is neither finished nor already carried out."""
    tracker = rt.migrations
    candidates = []
    for m in rt.cache.all("Migration", Migration):
        if m.spec.vm != vm or m.metadata.deletionTimestamp is not None or m.metadata.name in tracker.results:
            continue
        status = rt.cache.status["Migration"].get(m.metadata.name)
        if isinstance(status, MigrationStatus) and status.phase in TERMINAL:
            continue
        if isinstance(status, MigrationStatus) and status.phase in ("Running", "PostCopy") \
                and tracker.by_migration(m.metadata.name) is None:
            continue  # under way before a restart: the Migration controller settles it by asking libvirt
        candidates.append(m)
    if not candidates:
        return None
    first = min(candidates, key=lambda m: (m.metadata.creationTimestamp or rt.clock(), m.metadata.name))
    target = first.spec.targetHost
    return MigrationRequest(first.metadata.name, HostName(target) if target else None)


def migrate_uri(host: Host) -> str | None:
    """Where migration data for ``host`` goes: its migrationAddress; lab (unix socket) hosts: loopback."""
    if host.spec.migrationAddress:
        return f"tcp://{host.spec.migrationAddress}"
    if host.spec.uri.startswith("qemu+unix://") or host.spec.uri.startswith("qemu:///"):
        return LAB_MIGRATE_URI
    return None  # libvirt uses the target's host name


def all_disks_shared(rt: Runtime, storage_domains: list[str | None]) -> bool:
    """Every disk is on a shared domain, or a direct LUN (None: an iSCSI LUN or a block device every host
    sees), so the VM live-migrates without copying storage."""
    if not storage_domains:
        return False
    for name in storage_domains:
        if name is None:
            continue
        sd = rt.cache.get("StorageDomain", name, StorageDomain)
        if sd is None or not sd.spec.is_shared:
            return False
    return True


def migration_context(rt: Runtime, vm: VirtualMachine, storage_domains: list[str | None]) -> MigrationContext:
    name = vm.metadata.name
    tracker = rt.migrations
    cluster = rt.cache.get("Cluster", vm.spec.cluster, Cluster)
    uris, libvirt_uris = _host_uris(rt, vm.spec.cluster)
    return MigrationContext(
        policy=cluster.spec.migration if cluster is not None else MigrationPolicy(),
        request=open_request(rt, name), in_flight=tracker.in_flight(name), busy=tracker.busy(),
        shared_storage=all_disks_shared(rt, storage_domains), migrate_uris=uris,
        libvirt_uris=libvirt_uris, retry_blocked=tracker.retry_blocked(name, RETRY_BACKOFF_S),
    )


# Per cache: cluster -> (the Hosts' generation, migration URIs, libvirt URIs). Every plan of a VM asks; the
# Hosts rarely change.
_URIS: weakref.WeakKeyDictionary[Cache, dict[str, tuple[int, Mapping[HostName, str], Mapping[HostName, str]]]] = (
    weakref.WeakKeyDictionary()
)


def _host_uris(rt: Runtime, cluster: str) -> tuple[Mapping[HostName, str], Mapping[HostName, str]]:
    """(migration URI, libvirt URI) of each Host of ``cluster`` (read-only: shared by the plans)."""
    generation = rt.cache.generations.get("Host", 0)
    memo = _URIS.setdefault(rt.cache, {})
    cached = memo.get(cluster)
    if cached is not None and cached[0] == generation:
        return cached[1], cached[2]
    hosts = [h for h in rt.cache.all("Host", Host) if h.spec.cluster == cluster]
    uris = MappingProxyType({HostName(h.metadata.name): uri for h in hosts if (uri := migrate_uri(h)) is not None})
    libvirt_uris = MappingProxyType({HostName(h.metadata.name): h.spec.uri for h in hosts})
    memo[cluster] = (generation, uris, libvirt_uris)
    return uris, libvirt_uris


# ---------------------------------------------------------------- outcomes, reported by the VM controller


def note_request(rt: Runtime, move: MoveDecision | None, request: MigrationRequest | None, host: str | None) -> None:
    """Record what the planner decided about a Migration request, for the Migration controller."""
    if request is None or move is None:
        return
    tracker = rt.migrations
    if move.outcome in ("rejected", "satisfied") and host is not None:
        tracker.results[request.name] = MigrationJob(
            vm="", source=HostName(host), target=request.target or HostName(host), settings=MigrationSettings(),
            migration=request.name, reason=move.message, started=tracker.clock(), done=True,
            error=move.message if move.outcome == "rejected" else None, finished=tracker.clock())
    elif move.outcome == "waiting":
        tracker.waiting[request.name] = move.message
    rt.queue.add(("Migration", request.name))


def describe_outcome(job: MigrationJob) -> tuple[str, str, bool]:
    """(reason, message, warning) of the event for a finished migration."""
    took = f"{job.elapsed(job.finished or job.started):.1f} s"
    if job.error is None:
        downtime = job.completed.downtime_ms if job.completed else None
        extra = f", downtime {downtime} ms" if downtime is not None else ""
        return "Migrated", f"{job.source} -> {job.target} in {took}{extra}; {job.reason}", False
    if job.aborting:
        return ("MigrationAborted", f"{job.source} -> {job.target} aborted after {took}: {job.reason} "
                f"({job.error}); the VM still runs on {job.source}", True)
    hint = ""
    if job.settings.peer_uri and "connect" in (job.error or "").lower():
        hint = (f" (peer to peer, {job.source} itself connects to {job.settings.peer_uri}; make that URI work "
                "from the hosts, or set the Cluster's spec.migration.peerToPeer: false)")
    return ("MigrationFailed", f"{job.source} -> {job.target} failed after {took}: {job.error}{hint}; "
            f"the VM still runs on {job.source}", True)
