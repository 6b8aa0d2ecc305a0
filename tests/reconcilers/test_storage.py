"""Storage planning: what each StorageDomain type needs (backends), pools per host, the placement filter on
storage reachability, and Disk resize (offline or live)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from reconcilers.disk.actions import CreateVolume, DeleteVolume, LiveDisk, ResizeVolume
from reconcilers.disk.plan import plan_disk
from reconcilers.domain import (
    DirPoolConfig,
    DomainName,
    FileSource,
    HostName,
    NetfsPoolConfig,
    NetworkSource,
    NfsExport,
    ObservedPool,
    ObservedVolume,
    PoolName,
    VolumeName,
)
from reconcilers.plan import Impact
from reconcilers.scheduler import ClusterPolicy, HostView, Reject, Request, place
from reconcilers.storage.backends import backend_for
from reconcilers.storage.plan import plan_storage
from specs.disk import Disk
from specs.kinds import parse_resource
from specs.storage import StorageDomain

H1, H2 = HostName("h1"), HostName("h2")


def domain(name: str = "sd", **spec: Any) -> StorageDomain:
    sd = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": name},
                         "spec": {"cluster": "c1", **spec}})
    assert isinstance(sd, StorageDomain)
    return sd


def disk(**spec: Any) -> Disk:
    d = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": "data"},
                        "spec": {"storageDomain": "sd", "size": "1Gi", **spec}})
    assert isinstance(d, Disk)
    return d


# ---------------------------------------------------------------- backends


def test_posix_with_mount_is_a_netfs_pool_libvirt_mounts() -> None:
    sd = domain(type="posix", posix={"path": "/srv/vms", "mount": {"source": "nas1:/export/vms", "fsType": "nfs4",
                                                                    "options": "noatime,soft"}})
    b = backend_for(sd)
    assert b.unsupported(sd) is None
    assert b.pool(sd) == NetfsPoolConfig(PoolName("vp-sd"), "/srv/vms", "nas1", "/export/vms", "nfs", "4",
                                         ("noatime", "soft"))
    assert b.image_dir(sd) == "/srv/vms" and b.nfs(sd) is None
    assert b.disk_source(sd, "/srv/vms/d.qcow2") == FileSource("/srv/vms/d.qcow2")


def test_posix_without_mount_and_local_are_dir_pools() -> None:
    assert backend_for(sd := domain(type="posix", posix={"path": "/srv/x"})).pool(sd) == DirPoolConfig(
        PoolName("vp-sd"), "/srv/x")
    sd = domain(type="local", local={"path": "/var/lib/x"}, hosts=["h1"])
    assert backend_for(sd).pool(sd) == DirPoolConfig(PoolName("vp-sd"), "/var/lib/x")


def test_gluster_mount_is_a_glusterfs_netfs_pool_at_its_mount_path() -> None:
    sd = domain("vols", type="gluster", gluster={"servers": ["gl1", "gl2"], "volume": "vm0"})
    assert backend_for(sd).pool(sd) == NetfsPoolConfig(PoolName("vp-vols"), "/var/lib/virtplane/mnt/vols", "gl1",
                                                        "/vm0", "glusterfs", None, ("backup-volfile-servers=gl2",))
    sd = domain(type="gluster", gluster={"servers": ["gl1"], "volume": "vm0", "mountPath": "/mnt/g"})
    pool = backend_for(sd).pool(sd)
    assert isinstance(pool, NetfsPoolConfig) and pool.path == "/mnt/g"


def test_gluster_gfapi_is_refused_with_the_reason() -> None:
    sd = domain(type="gluster", gluster={"servers": ["gl1"], "volume": "vm0", "access": "gfapi"})
    why = backend_for(sd).unsupported(sd)
    assert why is not None and "gfapi is not served yet" in why and "access: mount" in why


def test_nfs_mount_is_an_nfs_netfs_pool() -> None:
    sd = domain(type="nfs", nfs={"server": "10.0.0.5", "export": "/export/vms", "version": "3"})
    assert backend_for(sd).pool(sd) == NetfsPoolConfig(PoolName("vp-sd"), "/var/lib/virtplane/mnt/sd", "10.0.0.5",
                                                        "/export/vms", "nfs", "3")


def test_nfs_qemu_has_no_pool_and_network_disks() -> None:
    sd = domain(type="nfs", nfs={"server": "10.0.0.5", "export": "/export/vms", "access": "qemu"})
    b = backend_for(sd)
    assert b.unsupported(sd) is None and b.pool(sd) is None
    assert b.nfs(sd) == NfsExport("10.0.0.5", "/export/vms")
    assert b.image_dir(sd) == "nfs://10.0.0.5/export/vms/"
    # the source name is the full server path, with its leading slash
    assert b.disk_source(sd, "nfs://10.0.0.5/export/vms/d.qcow2") == NetworkSource("nfs", "10.0.0.5",
                                                                                  "/export/vms/d.qcow2")
    assert plan_storage(sd, [H1], {}) == plan_storage(sd, [], {})  # nothing to ensure on hosts


def test_nfs_qemu_refuses_nfs4() -> None:
    sd = domain(type="nfs", nfs={"server": "n", "export": "/e", "access": "qemu", "version": "4.1"})
    why = backend_for(sd).unsupported(sd)
    assert why is not None and "NFSv3 only" in why


@pytest.mark.parametrize(("mount", "message"), [
    ({"source": "/dev/sdb1", "fsType": "nfs"}, "block devices are not mounted from specs"),
    ({"source": "nas1:/x", "fsType": "xfs"}, "fsType"),
    ({"source": "nas1:/x", "fsType": "glusterfs", "options": "log-file=/etc/shadow"}, "may not name a file"),
    ({"source": "nas1:/x", "fsType": "nfs", "options": "a b"}, "is refused"),
    ({"source": "nas 1:/x", "fsType": "nfs"}, "server:/path"),
])
def test_mount_specs_that_would_open_host_files_are_refused(mount: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        domain(type="posix", posix={"path": "/srv/vms", "mount": mount})


# ---------------------------------------------------------------- pools per host


def test_plan_storage_ensures_missing_inactive_and_different_pools_only() -> None:
    sd = domain(type="gluster", gluster={"servers": ["gl1"], "volume": "vm0"})
    want = backend_for(sd).pool(sd)
    assert want is not None
    other = NetfsPoolConfig(PoolName("vp-sd"), "/elsewhere", "gl1", "/vm0", "glusterfs")
    hosts = [HostName(h) for h in ("h1", "h2", "h3", "h4")]
    pools = {hosts[1]: ObservedPool(want, False, 0, 0), hosts[2]: ObservedPool(other, True, 10, 5),
             hosts[3]: ObservedPool(want, True, 10, 5)}
    plan = plan_storage(sd, hosts, pools)
    assert [(a.host, a.reason) for a in plan] == [  # type: ignore[attr-defined]
        ("h1", "pool missing"), ("h2", "pool inactive (not mounted)"), ("h3", "pool differs")]


# ---------------------------------------------------------------- placement


def view(name: HostName, reach: frozenset[str], notes: dict[str, str] | None = None) -> HostView:
    return HostView(name=name, cluster="c1", ready=True, maintenance=False, labels={}, cpus=8,
                    memory_bytes=16 << 30, storage_domains=reach, storage_notes=notes or {})


def test_a_host_that_cannot_reach_the_storage_is_not_chosen_and_says_why() -> None:
    req = Request(vm="web", cluster="c1", cpus=1, memory_bytes=1 << 30, storage_domains=frozenset({"gl"}))
    hosts = (view(H1, frozenset(), {"gl": "MountFailed: mount.glusterfs: no route to host"}),
             view(H2, frozenset({"gl"})))
    chosen = place(req, hosts, ClusterPolicy())
    assert chosen.host == H2
    [(host, why)] = chosen.rejected
    assert host == H1 and why.code is Reject.NO_STORAGE
    assert "gl (MountFailed: mount.glusterfs: no route to host)" in why.message
    nowhere = place(req, hosts[:1], ClusterPolicy())
    assert nowhere.host is None and "MountFailed" in nowhere.explain()


# ---------------------------------------------------------------- disks


def observed(capacity: int, path: str = "/srv/vms/data.qcow2") -> ObservedVolume:
    return ObservedVolume(VolumeName("data.qcow2"), path, capacity, 0, "qcow2")


def test_resize_is_offline_without_a_running_guest_and_live_with_one() -> None:
    d = disk(size="2Gi")
    [offline] = plan_disk(d, H1, "/srv/vms", observed(1 << 30), None)
    assert isinstance(offline, ResizeVolume) and offline.impact is Impact.NONE and not offline.live
    assert offline.capacity_bytes == 2 << 30 and "(offline)" in offline.target()
    user = LiveDisk(H2, DomainName("web"), "vdb")
    [live] = plan_disk(d, H1, "/srv/vms", observed(1 << 30), None, live=(user,))
    assert isinstance(live, ResizeVolume) and live.impact is Impact.LIVE and live.live == (user,)
    assert "blockresize web vdb on h2" in live.target()
    assert not plan_disk(d, H1, "/srv/vms", observed(2 << 30), None, live=(user,)), "already that size"
    assert not plan_disk(disk(size="1Gi"), H1, "/srv/vms", observed(2 << 30), None), "never shrinks"


def test_nfs_disks_are_created_grown_and_deleted_over_nfs() -> None:
    export = NfsExport("n1", "/export/vms")
    [create] = plan_disk(disk(), H1, export.url(""), None, None, nfs=export)
    assert isinstance(create, CreateVolume) and create.nfs == export
    assert create.target() == "nfs://n1/export/vms/data.qcow2 (over NFS, from the server)"
    [grow] = plan_disk(disk(size="3Gi"), H1, "", observed(1 << 30, export.url("data.qcow2")), None, nfs=export)
    assert isinstance(grow, ResizeVolume) and grow.nfs == export
    gone = disk(reclaimPolicy="Delete")
    deleted = gone.metadata.model_copy(update={"deletionTimestamp": "2026-01-01T00:00:00Z"})
    gone = gone.model_copy(update={"metadata": deleted})
    [delete] = plan_disk(gone, H1, "", observed(1 << 30), None, nfs=export)
    assert isinstance(delete, DeleteVolume) and delete.target() == "nfs://n1/export/vms/data.qcow2"
