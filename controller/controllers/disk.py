"""Disk controller: the image of a Disk in its storage domain's pool (created empty, cloned, imported or
copied from a snapshot; grown; deleted with the Disk when reclaimPolicy is Delete), or a direct LUN."""

from __future__ import annotations

import os.path
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.adapters import images, nfs
from controller.adapters.iscsi import LunProblem, LunTarget, probe_lun
from controller.adapters.libvirt import snapshots as lv
from controller.adapters.secrets import SecretError, SecretRef, redact
from controller.common.errors import ReconcileError, TransientError
from controller.controllers.common import refuse_disallowed_paths
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.registry import GLOBAL, Controller, Handler, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond
from reconcilers.disk.actions import (
    CopySnapshotDisk,
    CreateVolume,
    DeleteVolume,
    ImportImage,
    LiveDisk,
    ResizeVolume,
)
from reconcilers.disk.imports import import_refusal
from reconcilers.disk.plan import DiskSourceInfo, chap_usage, plan_disk, source_info, volume_name
from reconcilers.domain import HostName, NfsExport, ObservedVolume, VolumeName
from reconcilers.plan import Plan
from reconcilers.storage.backends import backend_for, pool_name
from specs.disk import Disk, DiskStatus
from specs.meta import Resource
from specs.snapshot import SnapshotStatus
from specs.storage import StorageDomain, StorageDomainStatus
from specs.vm import VirtualMachine, VirtualMachineStatus

FINALIZER = "virtplane.io/volume"
LUN_REFRESH = 60.0  # seconds between probes of a Ready iSCSI LUN


def _attached(rt: Runtime, name: str) -> tuple[str, ...]:
    return tuple(sorted(vm.metadata.name for vm in rt.cache.all("VirtualMachine", VirtualMachine)
                        if any(a.disk == name for a in vm.spec.disks)))


def _status(rt: Runtime, disk: Disk, phase: str, reason: str, message: str, **fields: Any) -> DiskStatus:
    prev = rt.cache.status["Disk"].get(disk.metadata.name)
    return DiskStatus(
        observedGeneration=disk.metadata.generation, phase=phase,
        conditions=rt.with_times((cond("Ready", phase == "Ready", reason, message),), prev), **fields,
    )


async def reconcile_disk(rt: Runtime, name: str) -> Result | None:
    disk = rt.cache.get("Disk", name, Disk)
    if disk is None:
        return None
    attached = _attached(rt, name)
    deleting = disk.metadata.deletionTimestamp is not None
    if not deleting:
        await refuse_disallowed_paths(rt, disk, "disk-controller")
    if disk.spec.lun is not None:
        return await _reconcile_lun(rt, disk, attached, deleting)
    disk = await rt.ensure_finalizer(disk, FINALIZER)
    sd_name = disk.spec.storageDomain or ""
    sd = rt.cache.get("StorageDomain", sd_name, StorageDomain)
    host = _host_for(rt, sd_name)
    base = backend_for(sd).image_dir(sd) if sd is not None else None
    if sd is not None and base is not None and host is None and not deleting and _was_ready(rt, name) \
            and _sd_claims_hosts(rt, sd_name):
        # The storage domain says hosts see it, but none answers this replica yet (it just started, or a
        # host is going down and the domain's status has not caught up): keep the Disk's status, look again.
        return Result(requeue_after=1.0)
    if sd is None or base is None or host is None:
        if deleting:
            await rt.store.remove_finalizer("Disk", name, FINALIZER)
            return None
        await rt.write_status("Disk", name, _status(rt, disk, "Pending", "StorageNotReady",
                                                    f"storage domain {sd_name} is not ready", attachedTo=attached))
        return None
    backend = backend_for(sd)
    export = backend.nfs(sd)
    observed = await _observe(rt, host, disk, export)
    source = source_info(disk, base, _source_infos(rt), ready_snapshot_disks(rt), _uploaded(rt, disk))
    if export is not None and disk.spec.source is not None and disk.spec.source.snapshot is not None:
        source = f"a copy of a snapshot is not supported yet on {sd_name} (nfs access qemu)"
    # The source matters only to create the image: an existing or deleted one never waits for it (the
    # base of an overlay waits for the overlay to go, so the overlay must not wait for the base).
    if isinstance(source, str) and observed is None and not deleting:
        imp = disk.spec.source.import_ if disk.spec.source is not None else None
        upload = imp is not None and imp.upload
        await rt.write_status("Disk", name, _status(rt, disk, "Pending", "WaitingForUpload" if upload else
                                                    "SourceNotReady", source, attachedTo=attached))
        return Result(requeue_after=2.0) if upload else None  # an upload lands outside the store: look again
    if observed is None and not deleting and not isinstance(source, str):
        refused = _import_blocked(rt, disk, source)
        if refused is not None:
            reason, message = refused
            await rt.write_status("Disk", name, _status(rt, disk, "Failed", reason, message, attachedTo=attached))
            return None
    overlays = overlay_clones_of(rt, name)
    if deleting and (attached or overlays):
        why = [f"attached to {', '.join(attached)}; detach it first"] if attached else []
        if overlays:
            why.append(f"backing image of overlay clone {', '.join(overlays)}; delete the clone first")
        prev = rt.cache.status["Disk"].get(name)
        status = (prev if isinstance(prev, DiskStatus) else DiskStatus()).model_copy(update={
            "phase": "Deleting", "conditions": rt.with_times((cond("Ready", False, "InUse", "; ".join(why)),), prev)})
        await rt.write_status("Disk", name, status)
        return Result(requeue_after=2.0)  # the VM may be going away too: look again soon
    live = live_users(rt, disk, sd, observed)
    plan = plan_disk(disk, host, base, observed, None if isinstance(source, str) else source, nfs=export, live=live)
    if plan:
        result = await rt.executor.execute(plan, rt)
        if not result.ok:
            assert result.error is not None and result.failed is not None
            await rt.emit(disk, "VolumeFailed", f"{result.failed.name}: {result.error}", warning=True,
                          source="disk-controller")
            if isinstance(result.error, images.ImageError):  # the same input fails the same way: no retry
                await rt.write_status("Disk", name, _status(rt, disk, "Failed", result.error.reason,
                                                            str(result.error), attachedTo=attached))
                return None
            raise result.error
        await rt.emit(disk, "PlanExecuted", result.describe_done(), source="disk-controller")
        observed = await _observe(rt, host, disk, export)
    if deleting:
        await rt.store.remove_finalizer("Disk", name, FINALIZER)
        return None
    if observed is None:
        raise TransientError(f"volume {volume_name(disk)} not visible in {pool_name(sd_name)} on {host} yet",
                             retry_after=1.0)
    await rt.write_status("Disk", name, _status(
        rt, disk, "Ready", "Created", f"in {pool_name(sd_name)} on {host}", path=observed.path,
        capacity=observed.capacity_bytes, allocation=observed.allocation_bytes, format=observed.format,
        backingPath=observed.backing_path, attachedTo=attached, correlationId=disk.metadata.correlationId))
    return None


async def _reconcile_lun(rt: Runtime, disk: Disk, attached: tuple[str, ...], deleting: bool) -> Result | None:
    """A direct LUN is passed through as it is: nothing to create, nothing to delete. An iSCSI LUN is probed
    (login with CHAP, size) and its CHAP password defined as a libvirt secret on every Ready host."""
    if deleting:
        if FINALIZER in disk.metadata.finalizers:
            await rt.store.remove_finalizer("Disk", disk.metadata.name, FINALIZER)
        return None
    lun = disk.spec.lun
    assert lun is not None
    name = disk.metadata.name
    if lun.iscsi is None:
        await rt.write_status("Disk", name, _status(rt, disk, "Ready", "Lun", "", path=lun.blockPath,
                                                    attachedTo=attached))
        return None
    iscsi = lun.iscsi
    target = LunTarget(iscsi.host, iscsi.port, iscsi.iqn, iscsi.lun, iscsi.chapUsername)
    password = None
    try:
        if iscsi.chapSecret is not None:
            password = SecretRef(iscsi.chapSecret, rt.secrets_dir).read()
        size = await probe_lun(target, password)
    except SecretError as err:
        return await _lun_failed(rt, disk, attached, target, "SecretInvalid", str(err))
    except LunProblem as problem:
        return await _lun_failed(rt, disk, attached, target, problem.reason, problem.message)
    hosts = sorted(h for h, r in rt.hosts.hosts.items() if r.ready)
    if password is not None and iscsi.chapSecret is not None:
        failed = []
        for h in hosts:
            try:
                await rt.hosts.connection(h).ensure_iscsi_secret(
                    chap_usage(iscsi.chapSecret), f"virtplane: CHAP password {iscsi.chapSecret}",
                    password.reveal().encode())
            except ReconcileError as err:
                failed.append(f"{h}: {redact(str(err), password)}")
        if failed:
            return await _lun_failed(rt, disk, attached, target, "SecretNotDefined",
                                     "cannot define the CHAP secret in libvirt on " + "; ".join(failed))
    chap = f"; CHAP secret defined on {len(hosts)} host(s)" if password is not None else ""
    await rt.write_status("Disk", name, _status(
        rt, disk, "Ready", "LunReachable", f"logged in to {target.url}: {size} bytes{chap}", path=target.url,
        capacity=size, format="raw", attachedTo=attached, correlationId=disk.metadata.correlationId))
    return Result(requeue_after=LUN_REFRESH)


async def _lun_failed(rt: Runtime, disk: Disk, attached: tuple[str, ...], target: LunTarget, reason: str,
                      message: str) -> Result:
    prev = rt.cache.status["Disk"].get(disk.metadata.name)
    before = next((c for c in prev.conditions if c.type == "Ready"), None) if isinstance(prev, DiskStatus) else None
    if before is None or before.reason != reason:  # one event per change, not one per retry
        await rt.emit(disk, reason, message, warning=True, source="disk-controller")
    await rt.write_status("Disk", disk.metadata.name, _status(rt, disk, "Failed", reason, message, path=target.url,
                                                              attachedTo=attached))
    return Result(requeue=True)


def _uploaded(rt: Runtime, disk: Disk) -> str | None:
    """The complete upload for this Disk (``virtplane disk upload``), if there is one."""
    if rt.upload_dir is None:
        return None
    path = rt.upload_dir / f"{disk.metadata.name}.{disk.metadata.uid}"
    return str(path) if path.exists() else None


def _import_blocked(rt: Runtime, disk: Disk, source: DiskSourceInfo | None) -> tuple[str, str] | None:
    """(reason, message) when the import must not run (again): a path outside what the server may read, or
    an import that already failed for this generation (a terminal failure; change the spec to retry)."""
    src = disk.spec.source
    if source is None or src is None or src.import_ is None:
        return None
    prev = rt.cache.status["Disk"].get(disk.metadata.name)
    if isinstance(prev, DiskStatus) and prev.phase == "Failed" and prev.observedGeneration == disk.metadata.generation:
        ready = next((c for c in prev.conditions if c.type == "Ready"), None)
        return (ready.reason or "ImportFailed", ready.message or "") if ready else ("ImportFailed", "")
    if src.import_.path is None:
        return None
    allowed = [d for sd in rt.cache.all("StorageDomain", StorageDomain) if (d := backend_for(sd).image_dir(sd))]
    why = import_refusal(os.path.realpath(source.path), [*allowed, *rt.import_dirs])
    return ("ImportRefused", why) if why is not None else None


def _was_ready(rt: Runtime, name: str) -> bool:
    return getattr(rt.cache.status["Disk"].get(name), "phase", None) == "Ready"


def _sd_claims_hosts(rt: Runtime, sd_name: str) -> bool:
    sd_status = rt.cache.status["StorageDomain"].get(sd_name)
    return isinstance(sd_status, StorageDomainStatus) and bool(sd_status.readyHosts)


def _host_for(rt: Runtime, sd_name: str) -> HostName | None:
    """A Ready host that sees the storage domain (any one: the images are shared by its hosts)."""
    sd_status = rt.cache.status["StorageDomain"].get(sd_name)
    hosts = sd_status.readyHosts if isinstance(sd_status, StorageDomainStatus) else ()
    return next((HostName(h) for h in hosts if rt.hosts.ready(h)), None)


async def _observe(rt: Runtime, host: HostName, disk: Disk, export: NfsExport | None) -> ObservedVolume | None:
    assert disk.spec.storageDomain is not None
    if export is not None:
        return await nfs.observe_image(export, volume_name(disk))
    vols = await rt.hosts.connection(host).list_volumes(pool_name(disk.spec.storageDomain))
    return next((v for v in vols if v.name == volume_name(disk)), None)


def live_users(rt: Runtime, disk: Disk, sd: StorageDomain, observed: ObservedVolume | None) -> tuple[LiveDisk, ...]:
    """Running guests that have this Disk's image open (from the last domain listing; no libvirt call)."""
    if observed is None:
        return ()
    source = backend_for(sd).disk_source(sd, observed.path)
    found = []
    for vm in _attached(rt, disk.metadata.name):
        status = rt.cache.status["VirtualMachine"].get(vm)
        host = HostName(status.host) if isinstance(status, VirtualMachineStatus) and status.host else None
        runtime = rt.hosts.hosts.get(host) if host is not None else None
        domain = runtime.domains.get(vm) if runtime is not None else None
        if host is None or domain is None or domain.live is None:
            continue
        found += [LiveDisk(host, domain.name, d.target) for d in domain.live.disks if d.source == source]
    return tuple(found)


def overlay_clones_of(rt: Runtime, name: str) -> tuple[str, ...]:
    """Disks that are qcow2 overlays on Disk ``name``: it must stay while they exist (even while deleting)."""
    return tuple(sorted(
        other.metadata.name for other in rt.cache.all("Disk", Disk)
        if (src := other.spec.source) is not None and src.clone is not None and src.clone.disk == name
        and src.clone.mode == "overlay"
    ))


def _source_infos(rt: Runtime) -> dict[str, DiskSourceInfo]:
    infos = {}
    for name, status in rt.cache.status["Disk"].items():
        if isinstance(status, DiskStatus) and status.phase == "Ready" and status.path:
            infos[name] = DiskSourceInfo(status.path, status.format, status.capacity)
    return infos


def ready_snapshot_disks(rt: Runtime) -> dict[str, tuple[str, ...]]:
    """{Snapshot name: Disks it holds} for the Ready snapshots (sources of Disks)."""
    return {name: s.disks for name, s in rt.cache.status["Snapshot"].items()
            if isinstance(s, SnapshotStatus) and s.phase == "Ready"}


# ---------------------------------------------------------------- actions


async def _create(a: CreateVolume, rt: Runtime) -> None:
    if a.nfs is not None:
        await nfs.create_image(a.nfs, a.volume, a.source_path, a.source_format)
        return
    conn = rt.hosts.connection(a.host)
    if a.source_path is None:
        await conn.create_volume(a.pool, a.volume)
    elif conn.is_test:
        # libvirt's test driver has no files to copy: a simulated copy is a new volume of that size.
        await conn.create_volume(a.pool, a.volume)
    else:
        await conn.copy_volume(a.pool, a.volume, a.source_path, a.source_format)


async def _import(a: ImportImage, rt: Runtime) -> None:
    """Download (a URL), inspect against the declared format, convert with progress in status, check."""
    disk = rt.cache.get("Disk", a.disk, Disk)

    def reporter(stage: str) -> images.Progress:
        async def report(percent: int) -> None:
            if disk is not None:
                await rt.write_status("Disk", a.disk, _status(rt, disk, "Creating", "Importing",
                                                              f"{stage} {a.source}: {percent}%", progress=percent))
        return report

    conn = rt.hosts.connection(a.host)
    staged: Path | None = None
    source = a.source
    try:
        if source.startswith(("http://", "https://")):
            staged = Path(a.dest_path + ".download")
            await images.download(source, staged, reporter("downloading"))
            source = str(staged)
        info = await images.image_info(source, a.source_format)
        volume = replace(a.volume, capacity_bytes=max(a.volume.capacity_bytes, info.virtual_size))
        if conn.is_test:
            # libvirt's test driver has no files: the source was inspected for real, the volume is simulated.
            await conn.create_volume(a.pool, volume)
            return
        await images.convert(source, info.format, a.dest_path, a.volume.format, reporter("converting"))
        await images.check(a.dest_path, a.volume.format)
        if rt.upload_dir is not None and Path(source).parent == rt.upload_dir:
            Path(source).unlink(missing_ok=True)  # imported: the staged upload is not needed any more
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)


async def _resize(a: ResizeVolume, rt: Runtime) -> None:
    if a.live:  # QEMU holds the image: it grows it and tells the guest
        for user in a.live:
            await rt.hosts.connection(user.host).block_resize(user.domain, user.target, a.capacity_bytes)
    elif a.nfs is not None:
        await nfs.resize_image(a.nfs, a.volume, a.format, a.capacity_bytes)
    else:
        await rt.hosts.connection(a.host).resize_volume(a.pool, a.volume, a.capacity_bytes)


async def _delete(a: DeleteVolume, rt: Runtime) -> None:
    if a.nfs is not None:
        await nfs.delete_image(a.nfs, a.volume)
        return
    await rt.hosts.connection(a.host).delete_volume(a.pool, a.volume)


async def _copy_snapshot(a: CopySnapshotDisk, rt: Runtime) -> None:
    dest = os.path.join(a.dest_dir, a.volume.name)
    if not os.path.exists(dest):
        await lv.copy_snapshot_disk(a.source_path, a.snapshot, dest, a.volume.format)


HANDLERS: dict[type, Handler] = {
    CreateVolume: _create, ImportImage: _import, ResizeVolume: _resize, DeleteVolume: _delete,
    CopySnapshotDisk: _copy_snapshot,
}


# ---------------------------------------------------------------- diff


async def preview_disk(rt: Runtime, change: Change) -> Preview:
    """Create, grow or delete: planned from the Disk's status (what the image is), without asking libvirt."""
    disk = change.after if isinstance(change.after, Disk) else None
    if disk is None and change.action == "deleted":
        current = rt.cache.get("Disk", change.name, Disk)
        if current is not None:
            disk = current.model_copy(update={"metadata": current.metadata.model_copy(
                update={"deletionTimestamp": rt.clock()})})
    if disk is None:
        return Preview(Plan())
    if disk.spec.lun is not None:
        return Preview(Plan(), note="a direct LUN is passed through as it is")
    sd = rt.cache.get("StorageDomain", disk.spec.storageDomain or "", StorageDomain)
    base = backend_for(sd).image_dir(sd) if sd is not None else None
    host = _host_for(rt, disk.spec.storageDomain or "")
    if sd is None or base is None or host is None:
        return Preview(Plan(), note=f"waiting: storage domain {disk.spec.storageDomain} is not ready")
    status = rt.cache.status["Disk"].get(disk.metadata.name)
    observed = None
    if isinstance(status, DiskStatus) and status.path and status.capacity is not None:
        observed = ObservedVolume(VolumeName(volume_name(disk)), status.path, status.capacity,
                                  status.allocation or 0, status.format or "qcow2", status.backingPath)
    source = source_info(disk, base, _source_infos(rt), ready_snapshot_disks(rt), _uploaded(rt, disk))
    if isinstance(source, str) and observed is None and disk.metadata.deletionTimestamp is None:
        return Preview(Plan(), note=f"waiting: {source}")
    return Preview(plan_disk(disk, host, base, observed, None if isinstance(source, str) else source,
                             nfs=backend_for(sd).nfs(sd), live=live_users(rt, disk, sd, observed)))


# ---------------------------------------------------------------- registration


def disk_scope(cache: Cache, obj: Resource) -> str:
    """A Disk is led by the leader of its storage domain's cluster (a LUN without one: the global scope)."""
    sd = cache.get("StorageDomain", getattr(obj.spec, "storageDomain", None) or "", StorageDomain)
    return sd.spec.cluster if sd is not None else GLOBAL


def _disks_on_domain(rt: Runtime, sd: str, before: Any, after: Any) -> Iterable[str]:
    return [d.metadata.name for d in rt.cache.all("Disk", Disk) if d.spec.storageDomain == sd]


def _clones_of(rt: Runtime, disk: str, before: Any, after: Any) -> Iterable[str]:
    return [d.metadata.name for d in rt.cache.all("Disk", Disk)
            if (src := d.spec.source) is not None and src.clone is not None and src.clone.disk == disk]


def _chap_luns(rt: Runtime, host: str, before: Any, after: Any) -> Iterable[str]:
    """A host that became Ready needs the CHAP secrets of the iSCSI LUNs."""
    if not after or before:
        return ()
    return [d.metadata.name for d in rt.cache.all("Disk", Disk)
            if d.spec.lun is not None and d.spec.lun.iscsi is not None and d.spec.lun.iscsi.chapSecret]


def _copies_of_snapshot(rt: Runtime, snapshot: str, before: Any, after: Any) -> Iterable[str]:
    if getattr(after, "phase", None) != "Ready":
        return ()
    return [d.metadata.name for d in rt.cache.all("Disk", Disk)
            if (src := d.spec.source) is not None and src.snapshot is not None and src.snapshot.snapshot == snapshot]


CONTROLLER = Controller(
    kind="Disk",
    reconcile=reconcile_disk,
    scope=disk_scope,
    finalizer=FINALIZER,
    watches=(
        Watch("StorageDomain", "status", _disks_on_domain),
        Watch("Disk", "status", _clones_of),
        Watch("Snapshot", "status", _copies_of_snapshot),
        Watch("Host", "ready", _chap_luns),
    ),
    plan=preview_disk,
    handlers=HANDLERS,
)
