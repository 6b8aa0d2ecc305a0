"""Adoption in process: a real etcd, the real controllers (Manager) and a libvirt test-driver host whose
in-memory state this test shares, so a foreign domain can be defined and started behind the controllers'
back. The adoption preview writes objects that reproduce it; once applied, the domain is stamped in place
(same libvirt domain id, never redefined) and the VM is Ready. The same on a real QEMU host:
tests/lab/test_adopt.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from controller.adapters.libvirt.codec import METADATA_NS
from controller.controllers.adopt import adopt_preview
from controller.controllers.registry import default_registry
from controller.runtime.manager import Manager, ManagerOptions
from controller.store import Store
from reconcilers.domain import HostName, VolumeConfig, VolumeName
from reconcilers.storage.backends import pool_name
from specs.kinds import parse_resource

pytestmark = pytest.mark.anyio

FOREIGN = """<domain type='kvm'>
  <name>legacy</name>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/><apic/><pae/></features>
  <cpu mode='custom' match='exact'><model>Skylake-Client</model><topology sockets='1' cores='2' threads='1'/>
    <feature policy='disable' name='hle'/></cpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/srv/old/legacy-root.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/old/installer.img'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <boot order='2'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:12:34:56'/>
      <model type='e1000'/>
      <boot order='1'/>
    </interface>
    <graphics type='vnc' autoport='yes'/>
  </devices>
</domain>
"""


def doc(kind: str, name: str, spec: dict[str, Any]) -> Any:
    return parse_resource({"apiVersion": "virtplane.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})


async def _until(what: str, probe: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await anyio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_foreign_domain_is_adopted_in_place(store: Store, tmp_path: Path) -> None:
    manager = Manager(store, default_registry(), ManagerOptions(data_dir=tmp_path, lease_ttl=5))
    rt = manager.rt
    sd = doc("StorageDomain", "old", {"cluster": "main", "type": "posix", "posix": {"path": "/srv/old"}})
    await store.apply([doc("Cluster", "main", {}), doc("Host", "h1", {"cluster": "main", "uri": "test:///default"}),
                       sd], correlation_id="setup")
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        await _until("host h1 Ready", lambda: _ready(rt))
        conn = rt.hosts.connection(HostName("h1"))
        await _until("storage domain old Ready", lambda: _phase(rt, "StorageDomain", "old", "Ready"))
        # the guest's images, already in the directory (the test driver's pool holds them as volumes)
        await conn.create_volume(pool_name("old"), VolumeConfig(VolumeName("legacy-root.qcow2"), 64 << 20, "qcow2"))
        await conn.create_volume(pool_name("old"), VolumeConfig(VolumeName("installer.img"), 8 << 20, "raw"))

        def define(c: libvirt.virConnect) -> int:
            dom = c.defineXML(FOREIGN)
            dom.create()
            return int(dom.ID())

        domid = await conn.run("define", define)
        result = await adopt_preview(rt, "h1", ["legacy"], False)
        assert result["refused"] == [], result["refused"]
        (adopted,) = result["adopted"]
        kinds = sorted(o["kind"] for o in adopted["objects"])
        assert kinds == ["Disk", "Disk", "Network", "VirtualMachine"]  # the storage domain "old" is reused
        disks = {o["metadata"]["name"]: o["spec"] for o in adopted["objects"] if o["kind"] == "Disk"}
        assert disks["legacy-root"] == {"storageDomain": "old", "format": "qcow2", "size": "64Mi"}
        vm_doc = next(o for o in adopted["objects"] if o["kind"] == "VirtualMachine")
        assert vm_doc["spec"]["cpu"]["features"] == [{"name": "hle", "policy": "disable"}]
        assert vm_doc["spec"]["passthrough"]["features"] == ["<acpi />", "<apic />", "<pae />"]

        await store.apply([parse_resource(o) for o in adopted["objects"]], correlation_id="adopt")

        async def ready() -> bool:
            status = rt.cache.status["VirtualMachine"].get("legacy")
            conds = getattr(status, "conditions", ())
            return any(c.type == "Ready" and c.status == "True" for c in conds)

        try:
            await _until("adopted VM Ready", ready, 30)
        finally:
            for kind in ("VirtualMachine", "Disk", "StorageDomain", "Network"):
                for name, st in rt.cache.status[kind].items():
                    print(kind, name, getattr(st, "phase", None), [(c.reason, c.message) for c in st.conditions])

        def state(c: libvirt.virConnect) -> tuple[int, str, str]:
            dom = c.lookupByName("legacy")
            return int(dom.ID()), dom.XMLDesc(0), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

        now_id, live, inactive = await conn.run("state", state)
        assert now_id == domid, "the domain was restarted"
        assert METADATA_NS in live and METADATA_NS in inactive
        calls = conn.calls
        assert calls["defineXML"] == 0 and calls.get("create", 0) == 0, sorted(calls.items())
        assert calls["setMetadata"] == 1
        status = rt.cache.status["VirtualMachine"]["legacy"]
        assert getattr(status, "host", None) == "h1"
        tg.cancel_scope.cancel()


async def _ready(rt: Any) -> bool:
    return bool(rt.hosts.ready("h1"))


def _phase(rt: Any, kind: str, name: str, phase: str) -> Any:
    async def probe() -> bool:
        return getattr(rt.cache.status[kind].get(name), "phase", None) == phase

    return probe()
