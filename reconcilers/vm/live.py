"""Changes to a running guest: what hot-plug can do, and the live requests the guest must acknowledge. Pure.

A live operation the guest must complete (ACPI unplug, balloon) is requested once; until the guest does it,
it is pending (the controller remembers when it asked: ``PendingRequests``), never re-requested. Past the
deadline it is reported and left for the next boot.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconcilers.conditions import cond as _cond
from reconcilers.domain import DiskDevice, DomainConfig, DomainName, HostName
from reconcilers.plan import Action
from reconcilers.vm.actions import AttachDisk, AttachNic, DetachDisk, DetachNic, SetMemory, SetVcpus
from specs.meta import Condition


def cold_device_changes(desired: DomainConfig, live: DomainConfig) -> tuple[str, ...]:
    """Device changes that hot-plug cannot do: a disk or NIC that stays but changes, any change of the
    cdrom/floppy drives (their media are not hot-plugged here)."""
    cold: list[str] = []
    if _drives(desired) != _drives(live):
        cold.append("cdrom/floppy drives")
    live_disks = {d.source: d for d in live.disks if d.device == "disk"}
    for disk in _plain(desired):
        seen = live_disks.get(disk.source)
        if seen is not None and seen != disk:
            cold.append(f"disk {disk.target}")
    live_nics = {n.name: n for n in live.nics}
    for nic in desired.nics:
        seen_nic = live_nics.get(nic.name)
        if seen_nic is not None and seen_nic != nic:
            cold.append(f"nic {nic.name}")
    return tuple(cold)


PENDING_DEADLINE_S = 30.0
PENDING_TYPES = ("DetachPending", "MemoryPending")


def pending_key(action: Action) -> str | None:
    """The identity of a live request the guest must acknowledge (None for the others)."""
    if isinstance(action, DetachDisk):
        return f"detach-disk:{action.disk.target}"
    if isinstance(action, DetachNic):
        return f"detach-nic:{action.nic.name}"
    if isinstance(action, SetMemory):
        return f"memory:{action.memory_kib}"
    return None


def without_pending(actions: list[Action], pending: Mapping[str, float]) -> tuple[list[Action], tuple[Condition, ...]]:
    kept: list[Action] = []
    conds: list[Condition] = []
    for action in actions:
        key = pending_key(action)
        age = pending.get(key) if key else None
        if age is None:
            kept.append(action)
            continue
        memory = isinstance(action, SetMemory)
        what = "the balloon to reach the new size" if memory else f"the unplug of {action.target()}"
        if age < PENDING_DEADLINE_S:
            conds.append(
                _cond(
                    "MemoryPending" if memory else "DetachPending",
                    True,
                    "WaitingForGuest",
                    f"waiting {age:.0f} s for the guest to acknowledge {what}",
                )
            )
        else:
            conds.append(
                _cond(
                    "MemoryNotReclaimed" if memory else "DetachNotAcknowledged",
                    True,
                    "GuestDidNotAcknowledge",
                    f"the guest did not acknowledge {what} within {PENDING_DEADLINE_S:.0f} s; "
                    "the persistent definition has the change, so it takes effect at the next restart",
                )
            )
    return kept, tuple(conds)


def _plain(config: DomainConfig) -> tuple[DiskDevice, ...]:
    return tuple(d for d in config.disks if d.device == "disk")


def _drives(config: DomainConfig) -> dict[str, DiskDevice]:
    return {d.target: d for d in config.disks if d.device != "disk"}


def live_actions(host: HostName, name: DomainName, desired: DomainConfig, live: DomainConfig) -> list[Action]:
    """Hot-plug of disks and NICs, balloon and vCPU changes (cdrom/floppy drives are cold changes)."""
    actions: list[Action] = []
    wanted_sources = {d.source for d in _plain(desired)}
    live_sources = {d.source for d in _plain(live)}
    for disk in _plain(live):
        if disk.source not in wanted_sources:
            actions.append(DetachDisk(host, name, disk, reason="removed from spec.disks"))
    for disk in _plain(desired):
        if disk.source not in live_sources:
            actions.append(AttachDisk(host, name, disk, reason="added to spec.disks"))
    wanted_nics = {n.name for n in desired.nics}
    live_nics = {n.name for n in live.nics}
    for nic in live.nics:
        if nic.name not in wanted_nics:
            actions.append(DetachNic(host, name, nic, reason="removed from spec.nics"))
    for nic in desired.nics:
        if nic.name not in live_nics:
            actions.append(AttachNic(host, name, nic, reason="added to spec.nics"))
    if desired.memory_kib != live.memory_kib and desired.max_memory_kib == live.max_memory_kib:
        actions.append(SetMemory(host, name, desired.memory_kib, reason="spec.memory.size changed"))
    if desired.vcpus != live.vcpus and desired.max_vcpus == live.max_vcpus:
        actions.append(SetVcpus(host, name, desired.vcpus, reason="spec.cpu.cores changed"))
    return actions
