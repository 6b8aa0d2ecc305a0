"""HostConnection on libvirt's real test driver (in-process): lifecycle, errors, events, storage, scale."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import libvirt
import pytest

from controller.adapters.libvirt.codec import render_disk_device, render_domain
from controller.adapters.libvirt.connection import HostConnection
from controller.adapters.libvirt.errors import ConflictError, ConnectionLost, NotFound, SpecInvalid, Unsupported
from controller.adapters.libvirt.observe import DomainEvent
from reconcilers.domain import (
    CorrelationId,
    DirPoolConfig,
    DiskDevice,
    DomainConfig,
    DomainName,
    FileSource,
    Ipv4Config,
    NetworkConfig,
    NetworkName,
    NicDevice,
    OwnerMetadata,
    OwnerUID,
    PoolName,
    VolumeConfig,
    VolumeName,
)

pytestmark = pytest.mark.anyio


def _vm(name: str, *, generation: int = 1) -> DomainConfig:
    return DomainConfig(
        name=DomainName(name),
        uuid=None,
        vcpus=1,
        max_vcpus=4,
        memory_kib=262144,
        max_memory_kib=524288,
        disks=(DiskDevice("vda", FileSource(f"/srv/posix/{name}.qcow2"), boot_order=1),),
        nics=(NicDevice("n0", "network", "default"),),
        spare_root_ports=2,
        owner=OwnerMetadata(OwnerUID(f"uid-{name}"), "VirtualMachine", name, generation, CorrelationId("c")),
    )


async def test_test_host_has_the_capacity_of_its_node_file(tmp_path: Path) -> None:
    host = HostConnection.for_test_host("h1", tmp_path, cpus=24, memory_kib=64 * 2**20)
    async with host:
        observed = await host.observe_host()
    assert observed.ready and observed.error is None
    assert (observed.cpus, observed.memory_bytes) == (24, 64 * 2**30)
    assert observed.libvirt_version == "9.0.0"
    assert observed.free_memory_bytes is None  # a node file without NUMA cells: libvirt cannot say


async def test_define_start_observe_stop_undefine(tmp_path: Path) -> None:
    host = HostConnection.for_test_host("h1", tmp_path, cpus=8, memory_kib=16 * 2**20)
    async with host:
        stored = await host.define_domain(_vm("web-1"))
        assert stored.uuid is not None and stored.nics[0].mac is not None, "libvirt fills UUID and MAC"
        observed = await host.observe_domain("web-1")
        assert observed is not None
        assert (observed.state, observed.persistent, observed.live) == ("shutoff", True, None)
        assert observed.config == stored and observed.owner == _vm("web-1").owner
        await host.start_domain("web-1")
        running = await host.observe_domain("web-1")
        assert running is not None and running.state == "running" and running.reason == "booted"
        assert running.live == stored and running.job is None
        with pytest.raises(ConflictError):
            await host.start_domain("web-1")  # already running: the observation was stale
        await host.set_memory("web-1", 393216, live=True, config=True)
        await host.set_vcpus("web-1", 2, live=False, config=True)
        after = await host.observe_domain("web-1")
        assert after is not None and after.config is not None
        assert (after.config.memory_kib, after.config.vcpus) == (393216, 2)
        await host.destroy_domain("web-1")
        await host.undefine_domain("web-1")
        assert await host.observe_domain("web-1") is None
        with pytest.raises(NotFound):
            await host.start_domain("web-1")
        calls = host.calls
    assert calls["defineXML"] == 1 and calls["start"] == 2 and calls["undefine"] == 1


async def test_errors_are_classified(tmp_path: Path) -> None:
    host = HostConnection.for_test_host("h1", tmp_path, cpus=8, memory_kib=16 * 2**20)
    async with host:
        await host.define_domain(_vm("db-1"))
        with pytest.raises(SpecInvalid):
            await host.set_vcpus("db-1", 64, live=False, config=True)  # above max_vcpus
        disk = render_disk_device(DiskDevice("vdb", FileSource("/srv/posix/extra.qcow2")))
        with pytest.raises(Unsupported):  # the test driver has no device hot-plug
            await host.attach_device("db-1", disk, live=False, config=True)
        with pytest.raises(ValueError, match="live / config"):
            await host.set_memory("db-1", 1024, live=False, config=False)


async def test_foreign_and_unparseable_domains_are_reported_not_hidden() -> None:
    host = HostConnection("default", "test:///default")
    async with host:
        domains = {d.name: d for d in await host.list_domains()}
    # test:///default ships a running domain "test" of type 'test': foreign and not representable.
    test = domains[DomainName("test")]
    assert test.owner is None and test.config is None and test.parse_error
    assert test.state == "running"


async def test_owned_domain_with_unrepresentable_xml_keeps_its_owner() -> None:
    host = HostConnection("default", "test:///default")
    xml = render_domain(_vm("odd-1")).replace(
        "<devices>", '<devices><interface type="direct"><source dev="eth0" mode="bridge"/></interface>'
    )
    async with host:
        raw = libvirt.open("test:///default")  # same process-wide state as the HostConnection's
        try:
            raw.defineXML(xml)  # someone edited our domain with virsh
            observed = await host.observe_domain("odd-1")
            assert observed is not None and observed.config is None
            assert observed.parse_error is not None and "interface type 'direct'" in observed.parse_error
            assert observed.owner == _vm("odd-1").owner
        finally:
            raw.lookupByName("odd-1").undefine()
            raw.close()


async def test_node_file_connections_are_separate_hosts_but_default_is_shared(tmp_path: Path) -> None:
    a = HostConnection.for_test_host("a", tmp_path, cpus=4, memory_kib=2**20)
    a_again = HostConnection("a-again", a.uri)
    d1, d2 = HostConnection("d1", "test:///default"), HostConnection("d2", "test:///default")
    async with a, a_again, d1, d2:
        await a.define_domain(_vm("only-on-a"))
        assert await a.observe_domain("only-on-a") is not None
        assert await a_again.observe_domain("only-on-a") is None, "same node file, separate state"
        await d1.define_domain(_vm("on-default"))
        assert await d2.observe_domain("on-default") is not None, "test:///default is process-wide"
        await d1.undefine_domain("on-default")


async def test_lifecycle_events_are_delivered_on_the_callers_loop(tmp_path: Path) -> None:
    host = HostConnection.for_test_host("h1", tmp_path, cpus=8, memory_kib=16 * 2**20)
    received: list[DomainEvent] = []
    stopped = anyio.Event()

    def on_event(event: DomainEvent) -> None:
        received.append(event)
        if event.event == "stopped":
            stopped.set()

    async with host:
        await host.watch_events(on_event)
        await host.define_domain(_vm("ev-1"))
        await host.start_domain("ev-1")
        await host.destroy_domain("ev-1")
        with anyio.fail_after(5):
            await stopped.wait()
    assert [(e.host, e.domain, e.event, e.detail) for e in received] == [
        ("h1", "ev-1", "defined", "added"),
        ("h1", "ev-1", "started", "booted"),
        ("h1", "ev-1", "stopped", "destroyed"),
    ]


async def test_unreachable_host_backs_off_between_reconnects(tmp_path: Path) -> None:
    host = HostConnection("gone", f"qemu+unix:///system?socket={tmp_path}/no-such-sock", reconnect_base=30)
    observed = await host.observe_host()
    assert not observed.ready and observed.error
    with pytest.raises(ConnectionLost) as caught:
        await host.list_domains()
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 30
    assert host.calls["open"] == 1, "a second open must wait for the backoff"


async def test_pool_volume_network_are_ensured_idempotently(tmp_path: Path) -> None:
    host = HostConnection.for_test_host("h1", tmp_path, cpus=8, memory_kib=16 * 2**20)
    pool = DirPoolConfig(PoolName("posix"), str(tmp_path / "images"))
    async with host:
        first = await host.ensure_pool(pool)
        assert (first.config, first.active) == (pool, True)
        assert first.capacity_bytes > 0 and 0 < first.available_bytes <= first.capacity_bytes
        assert await host.ensure_pool(pool) == first
        observed = await host.observe_pool("posix")
        assert observed is not None and observed.config == pool and observed.active
        assert await host.observe_pool("nope") is None
        with pytest.raises(ConflictError, match="active with other settings"):
            await host.ensure_pool(DirPoolConfig(PoolName("posix"), "/elsewhere"))
        vol = VolumeConfig(VolumeName("d.qcow2"), 2**30)
        created = await host.create_volume("posix", vol)
        assert (created.name, created.capacity_bytes) == ("d.qcow2", 2**30)
        assert await host.create_volume("posix", vol) == created
        with pytest.raises(Unsupported):  # the test driver cannot resize volumes (lab hosts can)
            await host.resize_volume("posix", "d.qcow2", 2 * 2**30)
        clone_cfg = VolumeConfig(VolumeName("clone.qcow2"), 2 * 2**30)
        clone = await host.copy_volume("posix", clone_cfg, created.path, "qcow2")
        assert clone.name == "clone.qcow2"
        assert await host.copy_volume("posix", clone_cfg, created.path) == clone, "idempotent"
        with pytest.raises(NotFound):
            await host.copy_volume("posix", VolumeConfig(VolumeName("x"), 1), "/not/in/any/pool.qcow2")
        assert sorted(v.name for v in await host.list_volumes("posix")) == ["clone.qcow2", "d.qcow2"]
        assert await host.delete_volume("posix", "clone.qcow2") is True
        assert await host.delete_volume("posix", "d.qcow2") is True
        assert await host.delete_volume("posix", "d.qcow2") is False
        with pytest.raises(SpecInvalid, match="no IP address"):
            await host.ensure_network(NetworkConfig(NetworkName("bad"), "nat", "vpbr2"))
        net = NetworkConfig(NetworkName("prod"), "nat", "vpbr1", ipv4=Ipv4Config("10.9.0.1/24"))
        first = await host.ensure_network(net)
        assert first.active and first.autostart and first.config == net
        assert (await host.ensure_network(net)).uuid == first.uuid
        assert await host.delete_network("prod") is True
        assert await host.delete_network("prod") is False


async def test_resync_of_10000_domains_on_100_hosts_is_fast(tmp_path: Path) -> None:
    hosts = [HostConnection.for_test_host(f"h{i}", tmp_path, cpus=64, memory_kib=2**30) for i in range(100)]

    async def fill(host: HostConnection) -> None:
        for j in range(100):
            await host.define_domain(_vm(f"{host.name}-vm{j}"))
            if j % 2 == 0:
                await host.start_domain(f"{host.name}-vm{j}")

    async with anyio.create_task_group() as tg:
        for host in hosts:
            tg.start_soon(fill, host)
    seen: dict[str, int] = {}

    async def observe(host: HostConnection) -> None:
        domains = await host.list_domains()
        seen[host.name] = sum(1 for d in domains if d.owner is not None and d.config is not None)

    timings = []
    for _ in range(2):  # the second pass is the periodic resync: unchanged XML hits the parse cache
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for host in hosts:
                tg.start_soon(observe, host)
        timings.append(time.perf_counter() - started)
    assert sum(seen.values()) == 10_000
    print(f"list_domains 10,000 domains / 100 hosts: first {timings[0]:.2f}s, resync {timings[1]:.2f}s")
    assert timings[1] < 5.0
    for host in hosts:
        await host.close()
