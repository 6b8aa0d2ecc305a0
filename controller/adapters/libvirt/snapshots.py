"""Internal qcow2 snapshots of a domain, through :meth:`HostConnection.run` (blocking calls in a worker).

- memory: ``virDomainSnapshotCreateXML`` with internal memory + disks (QEMU ``savevm``).
- disk-only on a running domain: libvirt 9.0 refuses internal disk snapshots of an active domain ("active
  qemu domains require external disk snapshots"), so QEMU takes them in one QMP ``transaction`` of
  ``blockdev-snapshot-internal-sync`` (atomic across disks), and libvirt is told with
  ``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE`` (state shutoff): from then on libvirt lists, reverts
  (``qemu-img snapshot -a`` with the domain stopped, then starts it) and deletes it (``delvm``) natively.
  libvirt marks the domain tainted "custom-monitor" for the QMP call; nothing else changes.
- disk-only on a shut-off domain: libvirt natively (``qemu-img snapshot -c``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import libvirt
import libvirt_qemu

from controller.adapters.libvirt.codec.snapshot import (
    parse_disk_aliases,
    parse_snapshot,
    render_redefine,
    render_snapshot,
)
from controller.adapters.libvirt.connection import Conn, HostConnection
from controller.common.errors import TerminalError
from reconcilers.snapshot.actions import CreateSnapshot, DeleteSnapshot, RevertSnapshot
from reconcilers.snapshot.plan import ObservedSnapshot


@dataclass(frozen=True)
class DomainSnapshots:
    """Snapshots of one domain on one host, and the saved-memory size of each (running domains only)."""

    active: bool
    snapshots: dict[str, ObservedSnapshot]
    vm_state_bytes: dict[str, int]


def _code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code())


def _qmp(dom: libvirt.virDomain, command: str, arguments: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"execute": command}
    if arguments:
        body["arguments"] = arguments
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(body), 0))
    if "error" in reply:
        raise TerminalError(f"QEMU {command}: {reply['error'].get('desc', reply['error'])}", op=command)
    return reply.get("return")


def list_blocking(conn: Conn, domain: str) -> DomainSnapshots | None:
    """None when the domain does not exist on this host."""
    try:
        dom = conn.lookupByName(domain)
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
    snaps: dict[str, ObservedSnapshot] = {}
    for snap in dom.listAllSnapshots(0):
        observed = parse_snapshot(snap.getXMLDesc(0))
        snaps[observed.name] = observed
    active = bool(dom.isActive())
    sizes: dict[str, int] = {}
    if active and snaps:
        for block in _qmp(dom, "query-block") or ():
            for s in (block.get("inserted") or {}).get("image", {}).get("snapshots", ()):
                sizes[s["name"]] = max(sizes.get(s["name"], 0), int(s.get("vm-state-size", 0)))
    return DomainSnapshots(active, snaps, sizes)


def _node_names(dom: libvirt.virDomain, targets: tuple[str, ...]) -> list[str]:
    aliases = parse_disk_aliases(dom.XMLDesc(0))
    nodes: dict[str, str] = {}
    for block in _qmp(dom, "query-block") or ():
        qdev = block.get("qdev") or ""
        node = (block.get("inserted") or {}).get("node-name")
        for target, alias in aliases.items():
            if node and f"/{alias}/" in f"{qdev}/":
                nodes[target] = node
    missing = [t for t in targets if t not in nodes]
    if missing:
        raise TerminalError(f"QEMU has no block node for disk(s) {', '.join(missing)}", op="query-block")
    return [nodes[t] for t in targets]


def create_blocking(conn: Conn, action: CreateSnapshot) -> None:
    dom = conn.lookupByName(action.domain)
    if action.memory or not dom.isActive():
        xml = render_snapshot(action.snapshot, action.description, memory=action.memory,
                              targets=action.targets, excluded=action.excluded)
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC if action.memory else 0
        dom.snapshotCreateXML(xml, flags)
        return
    nodes = _node_names(dom, action.targets)
    created = int(time.time())
    _qmp(dom, "transaction", {"actions": [
        {"type": "blockdev-snapshot-internal-sync", "data": {"device": n, "name": action.snapshot}} for n in nodes
    ]})
    try:
        xml = render_redefine(action.snapshot, action.description, creation_time=created, targets=action.targets,
                              excluded=action.excluded, domain_xml=dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
    except BaseException:
        for n in nodes:  # do not leave a snapshot libvirt does not know of
            _qmp(dom, "blockdev-snapshot-delete-internal-sync", {"device": n, "name": action.snapshot})
        raise


def delete_blocking(conn: Conn, action: DeleteSnapshot) -> bool:
    """False when it was already gone."""
    try:
        dom = conn.lookupByName(action.domain)
        dom.snapshotLookupByName(action.snapshot).delete(0)
    except libvirt.libvirtError as exc:
        if _code(exc) in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT):
            return False
        raise
    return True


def revert_blocking(conn: Conn, action: RevertSnapshot) -> float:
    """Revert; returns the seconds libvirt took."""
    dom = conn.lookupByName(action.domain)
    snap = dom.snapshotLookupByName(action.snapshot)
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING if action.start else 0
    started = time.monotonic()
    dom.revertToSnapshot(snap, flags)
    return time.monotonic() - started


async def list_snapshots(host: HostConnection, domain: str) -> DomainSnapshots | None:
    return await host.run("list_snapshots", lambda conn: list_blocking(conn, domain))


async def create_snapshot(host: HostConnection, action: CreateSnapshot) -> None:
    await host.run("create_snapshot", lambda conn: create_blocking(conn, action))


async def delete_snapshot(host: HostConnection, action: DeleteSnapshot) -> bool:
    return await host.run("delete_snapshot", lambda conn: delete_blocking(conn, action))


async def revert_snapshot(host: HostConnection, action: RevertSnapshot) -> float:
    return await host.run("revert_snapshot", lambda conn: revert_blocking(conn, action))


async def copy_snapshot_disk(source_path: str, snapshot: str, dest_path: str, fmt: str) -> None:
    """Write the content ``source_path`` had at internal snapshot ``snapshot`` to a new image ``dest_path``.

    Runs ``qemu-img convert -U -l snapshot.name=...`` where the controller runs, so the storage path must be
    visible here (lab and all-in-one; a host agent would run it elsewhere). ``-U``: the running guest holds
    the image's write lock; a snapshot's clusters never change, so reading them shared is safe."""
    tmp = f"{dest_path}.part"
    args = ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", fmt, "-l", f"snapshot.name={snapshot}",
            source_path, tmp]
    result = await anyio.run_process(args, check=False)
    if result.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise TerminalError(f"qemu-img convert of {source_path}@{snapshot} failed: "
                            f"{result.stderr.decode(errors='replace').strip()}", op="qemu-img convert")
    Path(tmp).rename(dest_path)
