"""The informer against a real etcd: everything listed at one revision, nothing missed between list and watch."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from controller.runtime.cache import Cache
from controller.store import Store
from specs.kinds import KINDS, parse_resource
from specs.meta import Resource
from specs.vm import VirtualMachineStatus

pytestmark = pytest.mark.anyio


def cluster(name: str) -> Resource:
    return parse_resource({"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": name},
                           "spec": {}})


def vm(name: str) -> Resource:
    return parse_resource({"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
                           "spec": {"cluster": "c1", "cpu": {"cores": 1}, "memory": {"size": "512Mi"}}})


async def test_a_write_between_the_list_reads_is_not_missed(store: Store, etcd_endpoint: str) -> None:
    """Cluster is listed first; a Cluster written right after that read (before the other prefixes are read)
    must reach the cache: either in the listing (it was not: the reads are pinned) or through the watch."""
    await store.apply([cluster("early"), vm("v1")], correlation_id="t")
    writer = await Store.connect([etcd_endpoint])
    real = store.kv.range_prefix
    reads: list[bytes] = []

    async def range_then_write(prefix: bytes, **kw: Any) -> Any:
        got = await real(prefix, **kw)
        reads.append(prefix)
        if len(reads) == 1:  # between the first read (Cluster specs) and the rest
            await writer.apply([cluster("late")], correlation_id="between")
            await writer.put_status("VirtualMachine", "v1", VirtualMachineStatus(phase="Running"), 0)
        return got

    store.kv.range_prefix = range_then_write  # type: ignore[method-assign]
    try:
        cache = Cache(store, tuple(KINDS))
        await cache.load()
    finally:
        store.kv.range_prefix = real  # type: ignore[method-assign]
    assert reads[0].endswith(b"/Cluster/") and len(reads) == 2 * len(KINDS)
    # Pinned: the listing is the world as it was at the first read.
    assert set(cache.specs["Cluster"]) == {"early"}
    assert "v1" not in cache.status["VirtualMachine"]

    changes: list[tuple[str, str, str]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.watch, lambda kind, name, part, before, after: changes.append((kind, name, part)))
        with anyio.fail_after(10):
            while ("Cluster", "late", "spec") not in changes or ("VirtualMachine", "v1", "status") not in changes:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    await writer.close()
    assert set(cache.specs["Cluster"]) == {"early", "late"}
    status = cache.status["VirtualMachine"]["v1"]
    assert isinstance(status, VirtualMachineStatus) and status.phase == "Running"


async def test_our_own_status_write_is_not_reported_again_by_the_watch(store: Store) -> None:
    """A status this replica wrote and noted (the writer reports it itself) is skipped when the watch
    delivers it; a status written by someone else is reported."""
    await store.apply([vm("v2"), vm("v4")], correlation_id="t")
    cache = Cache(store, tuple(KINDS))
    await cache.load()
    revision = await store.put_status("VirtualMachine", "v2", VirtualMachineStatus(phase="Running"), 0)
    cache.note_status("VirtualMachine", "v2", VirtualMachineStatus(phase="Running"), revision)
    await store.put_status("VirtualMachine", "v4", VirtualMachineStatus(phase="Running"), 0)  # not noted
    changes: list[tuple[str, str, str]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(cache.watch, lambda kind, name, part, before, after: changes.append((kind, name, part)))
        await store.apply([vm("v3")], correlation_id="after")  # a later change, to know the watch got past it
        with anyio.fail_after(10):
            while ("VirtualMachine", "v3", "spec") not in changes:
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert ("VirtualMachine", "v2", "status") not in changes, changes
    assert ("VirtualMachine", "v4", "status") in changes, changes
