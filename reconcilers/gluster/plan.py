"""GlusterVolume planning. Pure.

From the spec and what glusterd reports (``ObservedGlusterVolume``, None when there is no such volume):
create it, start it, set the options that differ, add the bricks the spec lists and the volume lacks.
What cannot be done safely is refused with a reason instead (``GlusterPlan.refused``): removing bricks
(data would have to be migrated first), changing the replica or arbiter count of an existing volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconcilers.gluster.actions import (
    AddGlusterBricks,
    CreateGlusterVolume,
    DeleteGlusterVolume,
    SetGlusterOption,
    StartGlusterVolume,
)
from reconcilers.plan import Action, Plan
from specs.gluster import GlusterVolume


@dataclass(frozen=True)
class ObservedGlusterVolume:
    name: str
    volume_id: str
    status: str  # Created | Started | Stopped
    type: str  # Distribute, Replicate, ...
    replica: int
    arbiter: int
    bricks: tuple[str, ...]  # host:path, in order
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GlusterPlan:
    plan: Plan
    refused: str | None = None


def plan_gluster_volume(vol: GlusterVolume, observed: ObservedGlusterVolume | None,
                        users: tuple[str, ...] = ()) -> GlusterPlan:
    """``users``: StorageDomains that mount the volume (a deleted volume waits for them to go)."""
    name, spec = vol.metadata.name, vol.spec
    if vol.metadata.deletionTimestamp is not None:
        if observed is None:
            return GlusterPlan(Plan())
        if users:
            return GlusterPlan(Plan(), f"in use by storage domain {', '.join(users)}: delete or repoint it first")
        return GlusterPlan(Plan.of(DeleteGlusterVolume(name, reason="GlusterVolume deleted")))
    wanted = tuple(b.text for b in spec.bricks)
    actions: list[Action] = []
    if observed is None:
        actions.append(CreateGlusterVolume(name, wanted, spec.replica, spec.arbiter, spec.force,
                                           reason="volume missing"))
        current: dict[str, str] = {}
    else:
        if observed.replica != spec.replica or bool(observed.arbiter) != spec.arbiter:
            return GlusterPlan(Plan(), f"the volume has replica {observed.replica} arbiter {observed.arbiter}; "
                                       "changing replica or arbiter of an existing volume is not supported")
        removed = [b for b in observed.bricks if b not in wanted]
        if removed:
            return GlusterPlan(Plan(), f"bricks {', '.join(removed)} are in the volume but not in the spec; "
                                       "removing bricks (with data migration) is not supported: list them again")
        added = tuple(b for b in wanted if b not in observed.bricks)
        if added:
            actions.append(AddGlusterBricks(name, added, spec.replica, spec.force,
                                            reason=f"expand by {len(added)} brick(s)"))
        current = dict(observed.options)
    if observed is None or observed.status != "Started":
        actions.append(StartGlusterVolume(name, reason="volume not started"))
    for key, value in sorted(spec.options.items()):
        if current.get(key) != value:
            actions.append(SetGlusterOption(name, key, value, reason=f"was {current.get(key, 'unset')}"))
    return GlusterPlan(Plan(tuple(actions)))
