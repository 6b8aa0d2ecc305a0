"""Disk planning: create, grow or delete the image of one Disk in its storage domain's pool. Pure.

A Disk ``web-root`` is the volume ``web-root.qcow2`` (``.img`` for raw) in its domain's pool.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from reconcilers.disk.actions import CopySnapshotDisk, CreateVolume, DeleteVolume, LiveDisk, ResizeVolume
from reconcilers.domain import HostName, ImageFormat, NfsExport, ObservedVolume, VolumeConfig, VolumeName
from reconcilers.plan import Action, Plan
from reconcilers.snapshot.actions import SnapshotName
from reconcilers.storage.backends import pool_name
from specs.disk import Disk


def chap_usage(secret: str) -> str:
    """The usage name of the libvirt secret holding CHAP password ``secret`` on every host."""
    return f"virtplane-chap-{secret}"


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
              source: DiskSourceInfo | None, *, nfs: NfsExport | None = None,
              live: tuple[LiveDisk, ...] = ()) -> Plan:
    """Create, grow, or (when deleted with reclaimPolicy Delete) remove the image of one Disk.

    ``nfs``: the domain's images are reached by the server over libnfs (no pool); ``live``: running guests
    that have the image open (a grown size reaches them with ``blockresize``)."""
    sd = disk.spec.storageDomain
    assert sd is not None
    pool, name = pool_name(sd), volume_name(disk)
    if disk.metadata.deletionTimestamp is not None:
        if observed is not None and (disk.spec.reclaimPolicy or "Delete") == "Delete":
            return Plan.of(DeleteVolume(host, pool, name, nfs, reason="Disk deleted (reclaimPolicy Delete)"))
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
            actions.append(CreateVolume(host, pool, vol, nfs=nfs, reason=f"overlay clone of {source.path}"))
        elif source is not None:
            capacity = max(size or 0, source.capacity_bytes or 0)
            actions.append(CreateVolume(host, pool, VolumeConfig(name, capacity, fmt), source_path=source.path,
                                        source_format=source.format, nfs=nfs, reason=f"copy of {source.path}"))
        else:
            actions.append(CreateVolume(host, pool, VolumeConfig(name, size or 0, fmt), nfs=nfs,
                                        reason="new empty disk"))
        return Plan(tuple(actions))
    if size is not None and size > observed.capacity_bytes:
        why = f"grow to {disk.spec.size}" + (" (live: the guest sees the new size)" if live else "")
        return Plan.of(ResizeVolume(host, pool, name, size, fmt, nfs, live, reason=why))
    return Plan()


def _fmt(text: str | None) -> ImageFormat | None:
    if text == "qcow2":
        return "qcow2"
    if text == "raw":
        return "raw"
    return None
