"""Blocking helpers for storage pools, volumes and networks (run in a HostConnection's worker threads).

Each returns raw XML (and flags) for the caller to parse with the codec; ``count(op)`` is told of every
mutating libvirt call, for the per-host call counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import libvirt

from controller.adapters.libvirt import codec
from reconcilers.domain import NetworkConfig, PoolConfig, VolumeConfig

Conn: TypeAlias = libvirt.virConnect
Count = Callable[[str], None]


def _missing(exc: libvirt.libvirtError, code: int) -> bool:
    return int(exc.get_error_code()) == code


def ensure_pool_blocking(conn: Conn, pool: PoolConfig, count: Count) -> tuple[str, bool]:
    """Define + build (mkdir) + start (mount, for netfs) + autostart the pool if needed; return (XML,
    active). An inactive pool defined with other settings is redefined; an active one is left alone (the
    caller sees the difference in the XML). A failing start (mount) raises."""
    desired = codec.render_pool(pool)
    try:
        count("storagePoolLookupByName")
        p = conn.storagePoolLookupByName(pool.name)
    except libvirt.libvirtError as exc:
        if not _missing(exc, libvirt.VIR_ERR_NO_STORAGE_POOL):
            raise
        p = _define_pool(conn, desired, count)
    else:
        if not p.isActive() and codec.parse_pool(str(p.XMLDesc(0))) != pool:
            count("storagePoolUndefine")
            p.undefine()
            p = _define_pool(conn, desired, count)
    if not p.isActive():
        count("storagePoolCreate")
        p.create(0)
        p.setAutostart(1)
    return str(p.XMLDesc(0)), bool(p.isActive())


def _define_pool(conn: Conn, xml: str, count: Count) -> libvirt.virStoragePool:
    count("storagePoolDefineXML")
    p = conn.storagePoolDefineXML(xml, 0)
    count("storagePoolBuild")
    p.build(0)
    return p


def observe_pool_blocking(conn: Conn, name: str, count: Count) -> tuple[str, bool] | None:
    """The pool's XML (capacity and free space refreshed when active) and whether it is active; None when
    no such pool is defined."""
    try:
        count("storagePoolLookupByName")
        p = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if _missing(exc, libvirt.VIR_ERR_NO_STORAGE_POOL):
            return None
        raise
    active = bool(p.isActive())
    if active:
        count("storagePoolRefresh")
        p.refresh(0)
    return str(p.XMLDesc(0)), active


def create_volume_blocking(conn: Conn, pool: str, volume: VolumeConfig, count: Count) -> str:
    """Create the volume unless one of that name exists; return its XML."""
    p = conn.storagePoolLookupByName(pool)
    try:
        count("storageVolLookupByName")
        vol = p.storageVolLookupByName(volume.name)
    except libvirt.libvirtError as exc:
        if not _missing(exc, libvirt.VIR_ERR_NO_STORAGE_VOL):
            raise
        count("storageVolCreateXML")
        vol = p.createXML(codec.render_volume(volume), 0)
    return str(vol.XMLDesc(0))


def delete_volume_blocking(conn: Conn, pool: str, name: str, count: Count) -> bool:
    """Delete the volume; False if it was already gone."""
    try:
        vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if _missing(exc, libvirt.VIR_ERR_NO_STORAGE_VOL):
            return False
        raise
    count("storageVolDelete")
    vol.delete(0)
    return True


def list_volumes_blocking(conn: Conn, pool: str, count: Count) -> list[str]:
    p = conn.storagePoolLookupByName(pool)
    count("storagePoolRefresh")
    p.refresh(0)
    count("listAllVolumes")
    return [str(v.XMLDesc(0)) for v in p.listAllVolumes(0)]


def ensure_network_blocking(
    conn: Conn, network: NetworkConfig, count: Count
) -> tuple[str, str, bool, bool, bool]:
    """Define + start + autostart the network if needed; return (xml, uuid, active, persistent, autostart)."""
    try:
        count("networkLookupByName")
        net = conn.networkLookupByName(network.name)
    except libvirt.libvirtError as exc:
        if not _missing(exc, libvirt.VIR_ERR_NO_NETWORK):
            raise
        count("networkDefineXML")
        net = conn.networkDefineXML(codec.render_network(network))
    if not net.isActive():
        count("networkCreate")
        net.create()
        net.setAutostart(1)
    return (
        str(net.XMLDesc(0)),
        str(net.UUIDString()),
        bool(net.isActive()),
        bool(net.isPersistent()),
        bool(net.autostart()),
    )


def copy_volume_blocking(
    conn: Conn, pool: str, volume: VolumeConfig, source_path: str, source_format: str | None, count: Count
) -> str:
    """Create ``volume`` as a full copy of the image at ``source_path`` (converted to ``volume.format`` by
    libvirt) unless it exists; return its XML. The source must be a volume of some pool on that host
    (``storageVolLookupByPath``); ``source_format`` is informational — libvirt probes the source volume."""
    p = conn.storagePoolLookupByName(pool)
    try:
        count("storageVolLookupByName")
        return str(p.storageVolLookupByName(volume.name).XMLDesc(0))
    except libvirt.libvirtError as exc:
        if not _missing(exc, libvirt.VIR_ERR_NO_STORAGE_VOL):
            raise
    del source_format
    count("storageVolLookupByPath")
    source = conn.storageVolLookupByPath(source_path)
    count("storageVolCreateXMLFrom")
    return str(p.createXMLFrom(codec.render_volume(volume), source, 0).XMLDesc(0))


def resize_volume_blocking(conn: Conn, pool: str, name: str, capacity_bytes: int, count: Count) -> str:
    """Grow the volume to ``capacity_bytes`` (never shrinks: libvirt refuses without the SHRINK flag)."""
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    count("storageVolResize")
    vol.resize(capacity_bytes, 0)
    return str(vol.XMLDesc(0))


def delete_network_blocking(conn: Conn, name: str, count: Count) -> bool:
    """Stop and undefine the network; False if it was already gone."""
    try:
        count("networkLookupByName")
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError as exc:
        if _missing(exc, libvirt.VIR_ERR_NO_NETWORK):
            return False
        raise
    if net.isActive():
        count("networkDestroy")
        net.destroy()
    if net.isPersistent():
        count("networkUndefine")
        net.undefine()
    return True


def ensure_iscsi_secret_blocking(conn: Conn, usage: str, description: str, value: bytes, count: Count) -> str:
    """Define the private iSCSI secret ``usage`` if needed and set its value; return its UUID. libvirt hands
    the value to QEMU encrypted; a private secret's value cannot be read back through the API."""
    try:
        count("secretLookupByUsage")
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
    except libvirt.libvirtError as exc:
        if not _missing(exc, libvirt.VIR_ERR_NO_SECRET):
            raise
        count("secretDefineXML")
        secret = conn.secretDefineXML(codec.render_iscsi_secret(usage, description), 0)
    count("secretSetValue")
    secret.setValue(value, 0)
    return str(secret.UUIDString())
