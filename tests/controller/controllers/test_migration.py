"""The Migration controller against a real etcd: phases from the shared registry, rejection, TTL deletion.

The migration itself is exercised on lab hosts (tests/lab/test_migration.py); here the registry is fed
directly, and time is a fake clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.libvirt.migration import MigrationJob
from controller.common.metrics import Registry
from controller.controllers.migration import reconcile_migration
from controller.controllers.migration_state import describe_outcome, open_request
from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.hosts import HostRegistry
from controller.runtime.workqueue import WorkQueue
from controller.store import Store
from reconcilers.domain import HostName, ObservedJob
from reconcilers.migration.actions import MigrationSettings
from specs.kinds import KINDS, parse_resource
from specs.migration import MigrationStatus

pytestmark = pytest.mark.anyio


def doc(kind: str, name: str, spec: dict[str, Any]) -> Any:
    return parse_resource({"apiVersion": "virtplane.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def runtime(store: Store, tmp_path: Path, clock: Clock) -> Runtime:
    vm = doc("VirtualMachine", "web", {"cluster": "c1", "cpu": {"cores": 1}, "memory": {"size": "256Mi"}})
    await store.apply([vm, doc("Migration", "m1", {"vm": "web", "targetHost": "h2", "ttlSeconds": 60})],
                      correlation_id="t")
    cache = Cache(store, tuple(KINDS))
    await cache.load()
    return Runtime(store, cache, HostRegistry(tmp_path), WorkQueue(), Registry(), clock=clock)


def phase(rt: Runtime, name: str) -> MigrationStatus:
    status = rt.cache.status["Migration"].get(name)
    assert isinstance(status, MigrationStatus)
    return status


async def test_phases_follow_the_registry_and_ttl_deletes(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    rt = await runtime(store, tmp_path, clock)
    await reconcile_migration(rt, "m1")
    assert phase(rt, "m1").phase == "Pending"
    assert open_request(rt, "web") is not None and open_request(rt, "web").target == "h2"  # type: ignore[union-attr]

    tracker = rt.migrations
    job = MigrationJob("web", HostName("h1"), HostName("h2"), MigrationSettings(), "m1", "requested", 0.0)
    job.last = ObservedJob("unbounded", data_total=400, data_remaining=100, data_processed=300)
    tracker.jobs["web"] = job
    result = await reconcile_migration(rt, "m1")
    status = phase(rt, "m1")
    assert status.phase == "Running" and (status.sourceHost, status.targetHost) == ("h1", "h2")
    assert status.dataTotal == 400 and "75%" in status.conditions[0].message
    assert result is not None and result.requeue_after

    job.done, job.finished = True, 3.0
    job.completed = ObservedJob("completed", data_total=400, data_processed=420, downtime_ms=42)
    assert tracker.collect("web") is job and tracker.busy() == {}
    await reconcile_migration(rt, "m1")
    status = phase(rt, "m1")
    assert status.phase == "Succeeded" and status.downtimeMs == 42 and status.completionTime == clock.now
    assert open_request(rt, "web") is None, "a finished request is not carried out twice"
    events = await store.list_events()
    assert any(e.reason == "Succeeded" and "downtime 42 ms" in e.message for e in events)

    clock.now += timedelta(seconds=30)
    result = await reconcile_migration(rt, "m1")
    assert result is not None and result.requeue_after == pytest.approx(30)
    assert await store.get("Migration", "m1") is not None
    clock.now += timedelta(seconds=31)
    await reconcile_migration(rt, "m1")
    assert await store.get("Migration", "m1") is None, "deleted ttlSeconds after completion"


async def test_a_migration_of_a_missing_vm_fails_with_the_reason(store: Store, tmp_path: Path) -> None:
    rt = await runtime(store, tmp_path, Clock())
    await store.apply([doc("Migration", "m2", {"vm": "nope"})], correlation_id="t")
    await rt.cache.load()
    await reconcile_migration(rt, "m2")
    status = phase(rt, "m2")
    assert status.phase == "Failed" and status.conditions[0].reason == "VMNotFound"
    assert "nope does not exist" in status.conditions[0].message


def test_a_peer_to_peer_connection_failure_says_what_to_do() -> None:
    peer = MigrationSettings(peer_uri="qemu+ssh://h2/system")
    job = MigrationJob("web", HostName("h1"), HostName("h2"), peer, "m1", "requested", 0.0, done=True,
                       error="Cannot recv data: ssh: connect to host h2 port 22: Connection refused", finished=1.0)
    reason, message, warning = describe_outcome(job)
    assert reason == "MigrationFailed" and warning
    assert "h1 itself connects to qemu+ssh://h2/system" in message and "peerToPeer: false" in message
    assert message.endswith("the VM still runs on h1")
    job.error = "operation failed: migration out job: unexpectedly failed"
    assert "peerToPeer" not in describe_outcome(job)[1]  # only for a failure to connect


async def test_a_migration_left_running_by_a_restart_is_not_carried_out_again(store: Store, tmp_path: Path) -> None:
    """After a restart no in-memory job backs a Running Migration: the VM controller must not start it anew
    (peer to peer, libvirt may still be carrying it out); the Migration controller settles it."""
    rt = await runtime(store, tmp_path, Clock())
    assert open_request(rt, "web") is not None  # Pending: carried out
    await rt.write_status("Migration", "m1", MigrationStatus(phase="Running", sourceHost="h1", targetHost="h2"))
    await rt.cache.load()
    assert phase(rt, "m1").phase == "Running"
    assert open_request(rt, "web") is None
    tracker = rt.migrations
    tracker.jobs["web"] = MigrationJob("web", HostName("h1"), HostName("h2"), MigrationSettings(), "m1", "r", 0.0)
    assert open_request(rt, "web") is not None  # ours, in flight: the planner sees it as in flight anyway
