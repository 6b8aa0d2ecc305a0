"""Domain snapshot XML (``<domainsnapshot>``) and the disk aliases of a live domain."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from controller.adapters.libvirt.codec._xml import CodecError, req_text, root, sub, text, to_string
from reconcilers.snapshot.actions import SnapshotName
from reconcilers.snapshot.plan import ObservedSnapshot, SnapshotDisk, SnapshotState

_STATES: dict[str, SnapshotState] = {
    "running": "running", "paused": "paused", "shutoff": "shutoff", "disk-snapshot": "disk-snapshot",
}  # fmt: skip


def render_snapshot(name: str, description: str, *, memory: bool, targets: Sequence[str],
                    excluded: Sequence[str] = ()) -> str:
    """A snapshot for ``virDomainSnapshotCreateXML``: internal disks, internal memory when ``memory``."""
    el = ET.Element("domainsnapshot")
    sub(el, "name", name)
    if description:
        sub(el, "description", description)
    sub(el, "memory", snapshot="internal" if memory else "no")
    disks = sub(el, "disks")
    for target in targets:
        sub(disks, "disk", name=target, snapshot="internal")
    for target in excluded:
        sub(disks, "disk", name=target, snapshot="no")
    return to_string(el)


def render_redefine(name: str, description: str, *, creation_time: int, targets: Sequence[str],
                    excluded: Sequence[str], domain_xml: str) -> str:
    """Metadata for an internal disk snapshot QEMU already took (``VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE``).

    The state is ``shutoff``: a disk-only snapshot reverts like a powered-off machine (libvirt refuses to
    revert to ``disk-snapshot``), and libvirt then reverts the internal snapshot natively."""
    el = ET.Element("domainsnapshot")
    sub(el, "name", name)
    if description:
        sub(el, "description", description)
    sub(el, "state", "shutoff")
    sub(el, "creationTime", str(creation_time))
    sub(el, "memory", snapshot="no")
    disks = sub(el, "disks")
    for target in targets:
        sub(disks, "disk", name=target, snapshot="internal")
    for target in excluded:
        sub(disks, "disk", name=target, snapshot="no")
    try:
        el.append(ET.fromstring(domain_xml))
    except ET.ParseError as exc:
        raise CodecError(f"domain XML is not well-formed: {exc}") from exc
    return to_string(el)


def parse_snapshot(xml: str) -> ObservedSnapshot:
    el = root(xml, "domainsnapshot")
    state = _STATES.get(text(el.find("state")) or "", "other")
    memory = el.find("memory")
    mem_mode = memory.get("snapshot") if memory is not None else None
    disks = tuple(
        SnapshotDisk(target=d.get("name", ""), included=d.get("snapshot", "internal") not in ("no",))
        for d in el.iterfind("disks/disk")
    )
    return ObservedSnapshot(
        name=SnapshotName(req_text(el, "name")),
        state=state,
        creation_time=int(text(el.find("creationTime")) or 0),
        memory=mem_mode in ("internal", "external") or (mem_mode is None and state in ("running", "paused")),
        disks=disks,
        description=text(el.find("description")) or "",
    )


def parse_disk_aliases(domain_xml: str) -> dict[str, str]:
    """{guest target: device alias} of a live domain's disks (``vda`` -> ``virtio-disk0``)."""
    el = root(domain_xml, "domain")
    found = {}
    for disk in el.iterfind("devices/disk"):
        target = disk.find("target")
        alias = disk.find("alias")
        if target is not None and alias is not None and target.get("dev") and alias.get("name"):
            found[target.get("dev", "")] = alias.get("name", "")
    return found
