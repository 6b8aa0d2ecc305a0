"""Pool, volume, network and host XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import get_args

from controller.adapters.libvirt.codec._xml import (
    FORWARD_MODES,
    CodecError,
    literal,
    req_text,
    root,
    scaled_bytes,
    sub,
    text,
    to_string,
)
from reconcilers.domain import (
    DirPoolConfig,
    Ipv4Config,
    NetfsFormat,
    NetfsPoolConfig,
    NetworkConfig,
    NetworkName,
    ObservedPool,
    ObservedVolume,
    PoolConfig,
    PoolName,
    VolumeConfig,
    VolumeName,
)

# ================================================================= storage pools and volumes


FS_NS = "http://libvirt.org/schemas/storagepool/fs/1.0"
NETFS_FORMATS: tuple[NetfsFormat, ...] = get_args(NetfsFormat)


def render_pool(pool: PoolConfig) -> str:
    if isinstance(pool, NetfsPoolConfig):
        return _render_netfs_pool(pool)
    el = ET.Element("pool", {"type": "dir"})
    sub(el, "name", pool.name)
    sub(sub(el, "target"), "path", pool.path)
    return to_string(el)


def _render_netfs_pool(pool: NetfsPoolConfig) -> str:
    el = ET.Element("pool", {"type": "netfs"})
    if pool.mount_options:
        el.set("xmlns:fs", FS_NS)
    sub(el, "name", pool.name)
    source = sub(el, "source")
    sub(source, "host", name=pool.source_host)
    sub(source, "dir", path=pool.source_dir)
    sub(source, "format", type=pool.format)
    if pool.nfs_version is not None:
        sub(source, "protocol", ver=pool.nfs_version)
    sub(sub(el, "target"), "path", pool.path)
    if pool.mount_options:
        opts = sub(el, "fs:mount_opts")
        for option in pool.mount_options:
            sub(opts, "fs:option", name=option)
    return to_string(el)


def parse_pool(xml: str) -> PoolConfig:
    el = root(xml, "pool")
    name, path = PoolName(req_text(el, "name")), req_text(el, "target/path")
    kind = el.get("type")
    if kind == "dir":
        return DirPoolConfig(name=name, path=path)
    if kind != "netfs":
        raise CodecError(f"pool type {kind!r} is not supported (expected dir or netfs)")
    host, src_dir, fmt = el.find("source/host"), el.find("source/dir"), el.find("source/format")
    if host is None or src_dir is None:
        raise CodecError("netfs pool without <source><host> and <dir>")
    protocol = el.find("source/protocol")
    options = tuple(o.get("name", "") for o in el.iterfind(f"{{{FS_NS}}}mount_opts/{{{FS_NS}}}option"))
    return NetfsPoolConfig(
        name=name, path=path, source_host=host.get("name", ""), source_dir=src_dir.get("path", ""),
        format=literal(fmt.get("type") if fmt is not None else "nfs", NETFS_FORMATS, "netfs format"),
        nfs_version=protocol.get("ver") if protocol is not None else None, mount_options=options,
    )


def parse_pool_state(xml: str, active: bool) -> ObservedPool:
    """The pool's config with its capacity and free space (``<capacity>``, ``<available>``)."""
    el = root(xml, "pool")
    return ObservedPool(
        config=parse_pool(xml), active=active,
        capacity_bytes=scaled_bytes(el.find("capacity"), "bytes") or 0,
        available_bytes=scaled_bytes(el.find("available"), "bytes") or 0,
    )


def render_volume(volume: VolumeConfig) -> str:
    el = ET.Element("volume")
    sub(el, "name", volume.name)
    sub(el, "capacity", str(volume.capacity_bytes), unit="bytes")
    sub(sub(el, "target"), "format", type=volume.format)
    if volume.backing_path is not None:
        backing = sub(el, "backingStore")
        sub(backing, "path", volume.backing_path)
        sub(backing, "format", type=volume.backing_format or volume.format)
    return to_string(el)


def parse_volume(xml: str) -> ObservedVolume:
    el = root(xml, "volume")
    fmt = el.find("target/format")
    backing_fmt = el.find("backingStore/format")
    return ObservedVolume(
        name=VolumeName(req_text(el, "name")),
        path=text(el.find("target/path")) or "",
        capacity_bytes=scaled_bytes(el.find("capacity"), "bytes") or 0,
        allocation_bytes=scaled_bytes(el.find("allocation"), "bytes") or 0,
        format=fmt.get("type", "raw") if fmt is not None else "raw",
        backing_path=text(el.find("backingStore/path")),
        backing_format=backing_fmt.get("type") if backing_fmt is not None else None,
    )


def render_iscsi_secret(usage: str, description: str) -> str:
    """A persistent, private libvirt secret for CHAP (``<usage type='iscsi'><target>usage</target>``)."""
    el = ET.Element("secret", {"ephemeral": "no", "private": "yes"})
    sub(el, "description", description)
    sub(sub(el, "usage", type="iscsi"), "target", usage)
    return to_string(el)


# ================================================================= networks


def render_network(network: NetworkConfig) -> str:
    el = ET.Element("network")
    sub(el, "name", network.name)
    if network.forward != "none":
        sub(el, "forward", mode=network.forward)
    if network.bridge is not None:
        sub(el, "bridge", name=network.bridge)
    if network.mtu is not None:
        sub(el, "mtu", size=str(network.mtu))
    if network.ipv4 is not None:
        address, _, prefix = network.ipv4.address.partition("/")
        ip = sub(el, "ip", address=address, prefix=prefix or "24")
        if network.ipv4.dhcp_start is not None and network.ipv4.dhcp_end is not None:
            sub(sub(ip, "dhcp"), "range", start=network.ipv4.dhcp_start, end=network.ipv4.dhcp_end)
    return to_string(el)


def parse_network(xml: str) -> NetworkConfig:
    el = root(xml, "network")
    forward = el.find("forward")
    bridge = el.find("bridge")
    mtu = el.find("mtu")
    return NetworkConfig(
        name=NetworkName(req_text(el, "name")),
        forward=literal("none" if forward is None else forward.get("mode", "nat"), FORWARD_MODES, "mode"),
        bridge=bridge.get("name") if bridge is not None else None,
        mtu=int(mtu.get("size", "0")) if mtu is not None else None,
        ipv4=_parse_ipv4(el),
    )


def _parse_ipv4(el: ET.Element) -> Ipv4Config | None:
    for ip in el.iterfind("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        prefix = ip.get("prefix") or _netmask_prefix(ip.get("netmask", "255.255.255.0"))
        dhcp = ip.find("dhcp/range")
        return Ipv4Config(
            address=f"{ip.get('address')}/{prefix}",
            dhcp_start=dhcp.get("start") if dhcp is not None else None,
            dhcp_end=dhcp.get("end") if dhcp is not None else None,
        )
    return None


def _netmask_prefix(netmask: str) -> str:
    return str(sum(bin(int(octet)).count("1") for octet in netmask.split(".")))


# ================================================================= hosts


def parse_host_uuid(capabilities_xml: str) -> str | None:
    """The host UUID from ``virConnectGetCapabilities`` (``host_uuid`` in libvirtd.conf on lab hosts)."""
    return text(root(capabilities_xml, "capabilities").find("host/uuid"))


def render_test_host(*, cpus: int, memory_kib: int, mhz: int = 2400) -> str:
    """A node file for libvirt's test driver (``test:///path/to/file.xml``): a host with this capacity and
    no domains, networks or pools."""
    node = ET.Element("node")
    cpu = sub(node, "cpu")
    for tag, value in (("mhz", mhz), ("model", "x86_64"), ("active", cpus), ("max", cpus), ("nodes", 1),
                       ("sockets", 1), ("cores", cpus), ("threads", 1)):  # fmt: skip
        sub(cpu, tag, str(value))
    sub(node, "memory", str(memory_kib))
    return to_string(node)
