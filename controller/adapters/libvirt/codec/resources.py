"""Pool, volume, network and host XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

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
    NetworkConfig,
    NetworkName,
    ObservedVolume,
    PoolName,
    VolumeConfig,
    VolumeName,
)

# ================================================================= storage pools and volumes


def render_pool(pool: DirPoolConfig) -> str:
    el = ET.Element("pool", {"type": "dir"})
    sub(el, "name", pool.name)
    sub(sub(el, "target"), "path", pool.path)
    return to_string(el)


def parse_pool(xml: str) -> DirPoolConfig:
    el = root(xml, "pool")
    if el.get("type") != "dir":
        raise CodecError(f"pool type {el.get('type')!r} is not supported (expected dir)")
    return DirPoolConfig(name=PoolName(req_text(el, "name")), path=req_text(el, "target/path"))


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
