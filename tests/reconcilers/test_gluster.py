"""GlusterVolume planning: create, start, options, expand; refusals; guarded delete. Pure."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from reconcilers.gluster.actions import (
    AddGlusterBricks,
    CreateGlusterVolume,
    DeleteGlusterVolume,
    SetGlusterOption,
    StartGlusterVolume,
)
from reconcilers.gluster.plan import ObservedGlusterVolume, plan_gluster_volume
from specs.gluster import GlusterVolume
from specs.kinds import parse_resource

B = [{"host": f"gl{i}", "path": f"/bricks/vm0/b{i}"} for i in range(1, 7)]


def volume(deleted: bool = False, **spec: Any) -> GlusterVolume:
    meta: dict[str, Any] = {"name": "vm0"}
    if deleted:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    vol = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "GlusterVolume", "metadata": meta,
                          "spec": {"cluster": "c1", "bricks": B[:3], "replica": 3, **spec}})
    assert isinstance(vol, GlusterVolume)
    return vol


def seen(status: str = "Started", bricks: int = 3, **kw: Any) -> ObservedGlusterVolume:
    base: dict[str, Any] = {"name": "vm0", "volume_id": "id", "status": status, "type": "Replicate", "replica": 3,
                            "arbiter": 0, "bricks": tuple(f"gl{i}:/bricks/vm0/b{i}" for i in range(1, bricks + 1))}
    return ObservedGlusterVolume(**(base | kw))


def test_a_missing_volume_is_created_started_and_configured() -> None:
    planned = plan_gluster_volume(volume(options={"performance.cache-size": "64MB"}, force=True), None)
    assert planned.refused is None
    create, start, option = planned.plan
    assert create == CreateGlusterVolume("vm0", tuple(f"gl{i}:/bricks/vm0/b{i}" for i in (1, 2, 3)), 3, False, True,
                                         reason="volume missing")
    assert isinstance(start, StartGlusterVolume) and option == SetGlusterOption(
        "vm0", "performance.cache-size", "64MB", reason="was unset")


def test_a_started_volume_with_its_options_needs_nothing() -> None:
    spec = volume(options={"performance.cache-size": "64MB"})
    assert not plan_gluster_volume(spec, seen(options={"performance.cache-size": "64MB"})).plan
    [change] = plan_gluster_volume(spec, seen(options={"performance.cache-size": "32MB"})).plan
    assert isinstance(change, SetGlusterOption) and change.reason == "was 32MB"
    [start] = plan_gluster_volume(volume(), seen("Stopped")).plan
    assert isinstance(start, StartGlusterVolume)


def test_new_bricks_expand_the_volume_by_whole_replica_sets() -> None:
    [add] = plan_gluster_volume(volume(bricks=B), seen()).plan
    assert isinstance(add, AddGlusterBricks) and add.bricks == tuple(f"gl{i}:/bricks/vm0/b{i}" for i in (4, 5, 6))
    assert add.replica == 3


def test_removing_bricks_or_changing_replica_is_refused() -> None:
    refused = plan_gluster_volume(volume(), seen(bricks=6))
    assert not refused.plan and refused.refused and "removing bricks" in refused.refused
    refused = plan_gluster_volume(volume(), seen(replica=2))
    assert refused.refused and "changing replica" in refused.refused


def test_delete_waits_for_the_storage_domains_that_use_it() -> None:
    waiting = plan_gluster_volume(volume(deleted=True), seen(), users=("vmstore",))
    assert not waiting.plan and waiting.refused and "in use by storage domain vmstore" in waiting.refused
    [delete] = plan_gluster_volume(volume(deleted=True), seen()).plan
    assert isinstance(delete, DeleteGlusterVolume)
    assert not plan_gluster_volume(volume(deleted=True), None).plan


@pytest.mark.parametrize(("spec", "message"), [
    ({"bricks": B[:2]}, "do not make whole replica sets of 3"),
    ({"replica": 2, "arbiter": True, "bricks": B[:2]}, "arbiter needs replica 3"),
    ({"bricks": [B[0], B[0], B[1]]}, "listed twice"),
    ({"options": {"diagnostics.brick-log-file": "/etc/passwd"}}, "not a path"),
    ({"options": {"nonsense": "x"}}, "Gluster option name"),
])
def test_bad_volume_specs_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        volume(**spec)
