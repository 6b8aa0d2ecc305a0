"""plan_snapshot: (desired, observed) -> actions, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

from reconcilers.domain import HostName
from reconcilers.snapshot.actions import CreateSnapshot, DeleteSnapshot, RevertSnapshot, SnapshotName
from reconcilers.snapshot.plan import REVERT_ANNOTATION, ObservedSnapshot, SnapshotDisk, SnapshotInputs, plan_snapshot
from specs.kinds import parse_resource
from specs.snapshot import RevertStatus, Snapshot, SnapshotStatus

H = HostName("lab-1")


def snap(memory: bool = False, disks: list[str] | None = None, annotations: dict[str, str] | None = None,
         deleting: bool = False) -> Snapshot:
    meta: dict[str, object] = {"name": "s1", "uid": "u-1", "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
    spec: dict[str, object] = {"vm": "vm1", "memory": memory}
    if disks is not None:
        spec["disks"] = disks
    obj = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "Snapshot", "metadata": meta, "spec": spec})
    assert isinstance(obj, Snapshot)
    return obj


SEEN = ObservedSnapshot(SnapshotName("s1"), "shutoff", 1, False, (SnapshotDisk("vda", True),),
                        "virtplane snapshot uid=u-1")


def inputs(s: Snapshot, observed: ObservedSnapshot | None = None, *, active: bool | None = True,
           status: SnapshotStatus | None = None, formats: dict[str, str] | None = None,
           vm: bool = True) -> SnapshotInputs:
    return SnapshotInputs(snapshot=s, status=status, vm_exists=vm, host=H if active is not None else None,
                          domain_active=active, targets={"root": "vda", "data": "vdb"},
                          formats=formats or {"root": "qcow2", "data": "qcow2"}, observed=observed)


def test_creates_live_disk_only_snapshot_of_all_disks() -> None:
    d = plan_snapshot(inputs(snap()))
    (action,) = d.plan
    assert isinstance(action, CreateSnapshot)
    assert (action.memory, action.targets, action.excluded) == (False, ("vdb", "vda"), ())
    assert d.phase == "Creating" and str(action.impact) == "live"


def test_disk_subset_excludes_the_others() -> None:
    (action,) = plan_snapshot(inputs(snap(disks=["root"]))).plan
    assert isinstance(action, CreateSnapshot)
    assert (action.targets, action.excluded) == (("vda",), ("vdb",))


def test_memory_snapshot_waits_for_a_running_vm() -> None:
    d = plan_snapshot(inputs(snap(memory=True), active=False))
    assert not d.plan and d.phase == "Pending" and d.conditions[0].reason == "VmNotRunning"


def test_raw_disk_is_refused_with_a_reason() -> None:
    d = plan_snapshot(inputs(snap(), formats={"root": "qcow2", "data": "raw"}))
    assert not d.plan and d.phase == "Failed" and "data" in d.conditions[0].message


def test_unknown_disk_fails() -> None:
    d = plan_snapshot(inputs(snap(disks=["other"])))
    assert d.phase == "Failed" and d.conditions[0].reason == "DiskNotAttached"


def test_ready_when_observed_and_nothing_to_do() -> None:
    d = plan_snapshot(inputs(snap(), SEEN))
    assert not d.plan and d.phase == "Ready"


def test_revert_request_is_answered_once() -> None:
    s = snap(annotations={REVERT_ANNOTATION: "t1"})
    (action,) = plan_snapshot(inputs(s, SEEN)).plan
    assert isinstance(action, RevertSnapshot) and action.requested == "t1" and action.start
    done = SnapshotStatus(phase="Ready", lastRevert=RevertStatus(requested="t1", phase="Succeeded"))
    assert not plan_snapshot(inputs(s, SEEN, status=done)).plan


def test_delete_removes_the_libvirt_snapshot_then_finishes() -> None:
    (action,) = plan_snapshot(inputs(snap(deleting=True), SEEN)).plan
    assert isinstance(action, DeleteSnapshot)
    d = plan_snapshot(inputs(snap(deleting=True), None))
    assert not d.plan and d.finished_teardown


def test_lost_snapshot_is_failed_not_recreated() -> None:
    prev = SnapshotStatus(phase="Ready", creationTime=datetime(2026, 1, 1, tzinfo=UTC))
    d = plan_snapshot(inputs(snap(), None, status=prev))
    assert not d.plan and d.phase == "Failed" and d.conditions[0].reason == "SnapshotLost"


def test_foreign_snapshot_of_same_name_conflicts() -> None:
    foreign = ObservedSnapshot(SnapshotName("s1"), "running", 1, True, (), "virtplane snapshot uid=other")
    assert plan_snapshot(inputs(snap(), foreign)).phase == "Failed"


def test_pending_without_vm_or_domain() -> None:
    assert plan_snapshot(inputs(snap(), vm=False)).conditions[0].reason == "VmNotFound"
    assert plan_snapshot(inputs(snap(), active=None)).conditions[0].reason == "VmNotDefined"
