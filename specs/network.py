"""Network: what VM NICs plug into (a host bridge, a libvirt NAT or isolated network, or user-mode)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from specs.errors import field_error
from specs.meta import Name, Resource, StatusBase, StrictModel

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def _check_ifname(value: str) -> str:
    if not _IFNAME.match(value):
        raise ValueError(
            f"expected a Linux interface name of 1-15 letters, digits, '_', '.', '-', got {value!r}"
        )
    return value


def _check_cidr(value: str) -> str:
    try:
        ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"expected an IPv4 network like 192.168.100.0/24, got {value!r} ({exc})") from None
    if "/" not in value:
        raise ValueError(
            f"expected an IPv4 network with a prefix length like 192.168.100.0/24, got {value!r}"
        )
    return value


def _check_ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"expected an IPv4 address like 192.168.100.10, got {value!r}") from None
    return value


InterfaceName = Annotated[str, AfterValidator(_check_ifname)]
Ipv4Cidr = Annotated[str, AfterValidator(_check_cidr)]
Ipv4Address = Annotated[str, AfterValidator(_check_ipv4)]


class DhcpRange(StrictModel):
    """Addresses handed out by libvirt's DHCP server."""

    start: Ipv4Address = Field(description="First address of the range.")
    end: Ipv4Address = Field(description="Last address of the range.")


class Ipv4Config(StrictModel):
    """IPv4 addressing of a nat or isolated network (managed by libvirt's dnsmasq)."""

    cidr: Ipv4Cidr = Field(description="Network, e.g. 192.168.100.0/24.")
    gateway: Ipv4Address | None = Field(
        default=None, description="Address of the host side; default: first address of cidr."
    )
    dhcp: DhcpRange | None = Field(default=None, description="DHCP range; omit for static addressing.")

    @model_validator(mode="after")
    def _inside(self) -> Ipv4Config:
        net = ipaddress.IPv4Network(self.cidr)
        if self.gateway is not None and ipaddress.IPv4Address(self.gateway) not in net:
            raise field_error("gateway", f"gateway {self.gateway} is outside {self.cidr}")
        if self.dhcp is not None:
            start, end = ipaddress.IPv4Address(self.dhcp.start), ipaddress.IPv4Address(self.dhcp.end)
            for name, addr in (("start", start), ("end", end)):
                if addr not in net:
                    raise field_error(f"dhcp.{name}", f"dhcp {name} {addr} is outside {self.cidr}")
            if start > end:
                raise field_error("dhcp.end", f"dhcp end {end} is before start {start}")
        return self


class NetworkSpec(StrictModel):
    """Desired state of a network."""

    cluster: Name = Field(description="Cluster whose hosts provide this network.")
    type: Literal["bridge", "nat", "isolated", "user"] = Field(
        description="bridge: an existing host bridge (set bridge); nat: a libvirt NAT network; isolated: a "
        "libvirt network without uplink; user: QEMU user-mode networking (lab, no root needed)."
    )
    bridge: InterfaceName | None = Field(
        default=None,
        description="Host bridge to plug into (type bridge, required), or the name libvirt gives the bridge "
        "it creates (nat/isolated, optional).",
    )
    vlan: int | None = Field(
        default=None, ge=1, le=4094,
        description="802.1Q VLAN tag of the VMs' ports (type bridge with virtualport openvswitch only: libvirt "
        "cannot tag ports of a Linux bridge).",
    )
    virtualport: Literal["openvswitch"] | None = Field(
        default=None,
        description="openvswitch: the bridge is an Open vSwitch bridge (libvirt adds the VMs' ports with "
        "ovs-vsctl; needed for vlan). Type bridge only.",
    )
    mtu: int | None = Field(
        default=None, ge=68, le=65535, description="MTU of VM interfaces; default: the bridge's."
    )
    ipv4: Ipv4Config | None = Field(default=None, description="Addressing of a nat or isolated network.")

    @model_validator(mode="after")
    def _per_type(self) -> NetworkSpec:
        if self.type == "bridge" and self.bridge is None:
            raise field_error(
                "bridge", "type bridge needs bridge: the name of an existing host bridge, e.g. br0"
            )
        if self.vlan is not None and self.type != "bridge":
            raise field_error("vlan", f"vlan applies to type bridge only, not {self.type}")
        if self.virtualport is not None and self.type != "bridge":
            raise field_error("virtualport", f"virtualport applies to type bridge only, not {self.type}")
        if self.vlan is not None and self.virtualport is None:
            raise field_error(
                "vlan", "vlan on a Linux bridge is not supported (libvirt tags VLANs only on Open vSwitch "
                "ports): set virtualport: openvswitch for an OVS bridge, or plug into a bridge that is already "
                "on the VLAN (e.g. one over eth0.10) and omit vlan",
            )
        if self.ipv4 is not None and self.type not in ("nat", "isolated"):
            raise field_error("ipv4", f"ipv4 applies to nat and isolated networks, not {self.type}")
        if self.type == "user" and (self.bridge is not None or self.mtu is not None):
            raise field_error("type", "a user network has no bridge or mtu")
        if self.type == "nat" and self.ipv4 is None:
            raise field_error("ipv4", "type nat needs ipv4 (cidr, optional dhcp range)")
        return self


class Network(Resource):
    """A network (``kind: Network``)."""

    kind: Literal["Network"] = Field(description="Always Network.")
    spec: NetworkSpec = Field(description="Desired state of the network.")


class NetworkStatus(StatusBase):
    """Observed state of a network."""

    phase: Literal["Ready", "Degraded", "Unavailable"] | None = Field(
        default=None, description="Ready on all hosts of the cluster, on some (Degraded), or on none."
    )
    bridge: str | None = Field(default=None, description="Bridge actually used on the hosts.")
    readyHosts: tuple[str, ...] = Field(default=(), description="Hosts where the network is active.")
    failedHosts: tuple[str, ...] = Field(default=(), description="Hosts where it could not be activated.")
