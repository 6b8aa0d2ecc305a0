"""Planning for the Snapshot kind. Pure: no await, no clock, no I/O.

Snapshots are *internal* qcow2 snapshots (see docs/snapshots.md for why): the VM's disk paths never change,
so the VM controller keeps seeing the config it defined, and libvirt 9.0 reverts and deletes them natively.

- ``memory: true``: libvirt's internal snapshot of the running guest (QEMU ``savevm``): disks + RAM;
  a revert resumes the guest where it was.
- ``memory: false``: an internal snapshot of the chosen disks only. On a running guest QEMU takes it live
  (``blockdev-snapshot-internal-sync``) and libvirt learns of it as a powered-off state; a revert restarts
  the guest from those disks (a cold boot), as reverting a disk-only snapshot must.

A revert is a request, not a state: the annotation ``virtplane.io/revert-requested: <any new value>`` asks
for one; status.lastRevert.requested records which request was answered, so each value reverts once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from reconcilers.conditions import cond as _cond
from reconcilers.domain import DomainName, HostName
from reconcilers.plan import Plan
from reconcilers.snapshot.actions import CreateSnapshot, DeleteSnapshot, RevertSnapshot, SnapshotName
from specs.meta import Condition
from specs.snapshot import Snapshot, SnapshotStatus

REVERT_ANNOTATION = "virtplane.io/revert-requested"
OWNER_PREFIX = "virtplane snapshot uid="

SnapshotState = Literal["running", "paused", "shutoff", "disk-snapshot", "other"]


@dataclass(frozen=True, slots=True)
class SnapshotDisk:
    """One disk of a snapshot: the guest target (``vda``) and whether its content is in the snapshot."""

    target: str
    included: bool


@dataclass(frozen=True, slots=True)
class ObservedSnapshot:
    """A libvirt snapshot of a domain, as parsed from its XML."""

    name: SnapshotName
    state: SnapshotState
    creation_time: int  # seconds since the epoch
    memory: bool
    disks: tuple[SnapshotDisk, ...]
    description: str = ""

    @property
    def owner_uid(self) -> str | None:
        first = self.description.splitlines()[0] if self.description else ""
        return first[len(OWNER_PREFIX):] if first.startswith(OWNER_PREFIX) else None

    @property
    def included_targets(self) -> tuple[str, ...]:
        return tuple(d.target for d in self.disks if d.included)


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class SnapshotInputs:
    snapshot: Snapshot
    status: SnapshotStatus | None
    vm_exists: bool
    host: HostName | None  # where the VM's domain is
    domain_active: bool | None  # None: no domain found on that host
    targets: Mapping[str, str]  # Disk name -> guest target in the domain (only image disks)
    formats: Mapping[str, str]  # Disk name -> image format
    observed: ObservedSnapshot | None
    should_run: bool = True  # the VM's runStrategy wants the guest running


@dataclass(frozen=True)
class SnapshotDecision:
    plan: Plan
    phase: Literal["Pending", "Creating", "Ready", "Failed", "Deleting"] | None
    conditions: tuple[Condition, ...] = ()
    finished_teardown: bool = False


def _pending(reason: str, message: str) -> SnapshotDecision:
    return SnapshotDecision(Plan(), "Pending", (_cond("Ready", False, reason, message),))


def _failed(reason: str, message: str) -> SnapshotDecision:
    return SnapshotDecision(Plan(), "Failed", (_cond("Ready", False, reason, message),))


def owner_description(snapshot: Snapshot) -> str:
    uid = snapshot.metadata.uid or snapshot.metadata.name
    text = snapshot.spec.description
    return f"{OWNER_PREFIX}{uid}" + (f"\n{text}" if text else "")


def requested_revert(snapshot: Snapshot, status: SnapshotStatus | None) -> str | None:
    """The pending revert request, or None when there is none or it was answered already."""
    value = snapshot.metadata.annotations.get(REVERT_ANNOTATION)
    if not value:
        return None
    answered = status.lastRevert.requested if status is not None and status.lastRevert is not None else None
    return None if value == answered else value


def plan_snapshot(inputs: SnapshotInputs) -> SnapshotDecision:
    snap = inputs.snapshot
    name = SnapshotName(snap.metadata.name)
    domain = DomainName(snap.spec.vm)
    seen = inputs.observed
    if snap.metadata.deletionTimestamp is not None:
        if seen is not None and inputs.host is not None:
            return SnapshotDecision(Plan.of(DeleteSnapshot(inputs.host, domain, name, reason="Snapshot deleted")),
                                    "Deleting", (_cond("Ready", False, "Deleting"),))
        return SnapshotDecision(Plan(), "Deleting", (_cond("Ready", False, "Deleted"),), finished_teardown=True)
    if not inputs.vm_exists:
        return _pending("VmNotFound", f"VirtualMachine {snap.spec.vm} does not exist")
    if inputs.host is None or inputs.domain_active is None:
        return _pending("VmNotDefined", f"VirtualMachine {snap.spec.vm} has no domain on a reachable host yet")
    if seen is not None:
        if snap.metadata.uid and seen.owner_uid not in (None, snap.metadata.uid):
            return _failed("NameConflict", f"{snap.spec.vm} already has a libvirt snapshot named {name} that "
                                           "belongs to another Snapshot object; choose another name")
        revert = requested_revert(snap, inputs.status)
        if revert is not None:
            start = seen.memory or inputs.should_run
            return SnapshotDecision(
                Plan.of(RevertSnapshot(inputs.host, domain, name, start, revert,
                                       reason=f"{REVERT_ANNOTATION}={revert}")),
                "Ready", (_cond("Ready", True, "Reverting"),))
        return SnapshotDecision(Plan(), "Ready", (_cond("Ready", True, "Created", f"on {inputs.host}"),))
    previous = inputs.status
    if previous is not None and previous.creationTime is not None and previous.phase == "Ready":
        return _failed("SnapshotLost", f"the libvirt snapshot {name} of {domain} is gone from {inputs.host}; "
                                       "delete this Snapshot (and take a new one)")
    return _plan_create(inputs, name, domain)


def _plan_create(inputs: SnapshotInputs, name: SnapshotName, domain: DomainName) -> SnapshotDecision:
    snap = inputs.snapshot
    assert inputs.host is not None
    wanted = list(snap.spec.disks) if snap.spec.disks is not None else sorted(inputs.targets)
    unknown = [d for d in wanted if d not in inputs.targets]
    if unknown:
        return _failed("DiskNotAttached", f"disk(s) {', '.join(unknown)} are not attached to {domain} "
                                          "(spec.disks lists Disks of the VM)")
    if not wanted:
        return _failed("NoDisks", f"{domain} has no image disks to snapshot")
    raw = [d for d in wanted if inputs.formats.get(d) != "qcow2"]
    if raw:
        return _failed("Unsupported", f"disk(s) {', '.join(raw)} are not qcow2: snapshots are internal qcow2 "
                                      "snapshots (convert the disk, or leave it out with spec.disks)")
    if snap.spec.memory and not inputs.domain_active:
        return _pending("VmNotRunning", f"a snapshot with memory needs {domain} running")
    targets = tuple(inputs.targets[d] for d in wanted)
    excluded = tuple(sorted(t for d, t in inputs.targets.items() if d not in wanted))
    if snap.spec.memory and excluded:
        # Memory snapshots cover every disk (validated in the spec); a non-qcow2 extra disk cannot take part.
        return _failed("Unsupported", "a snapshot with memory needs every disk of the VM in qcow2")
    action = CreateSnapshot(inputs.host, domain, name, snap.spec.memory, targets, excluded,
                            owner_description(snap), reason="Snapshot created")
    return SnapshotDecision(Plan.of(action), "Creating", (_cond("Ready", False, "Creating"),))


