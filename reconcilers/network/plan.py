"""Network planning: the libvirt network each host of the cluster needs. Pure.

A Network ``lan`` of type nat/isolated is the libvirt network ``vp-lan`` on every host of its cluster; a
``bridge`` network uses an existing host bridge and a ``user`` network needs nothing on the host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconcilers.domain import HostName, Ipv4Config, NetworkConfig, NetworkName
from reconcilers.network.actions import EnsureNetwork
from reconcilers.plan import Plan
from specs.network import Network


def network_config(net: Network) -> NetworkConfig | None:
    """The libvirt network we define, or None when hosts need none (user, existing bridge)."""
    spec = net.spec
    if spec.type not in ("nat", "isolated"):
        return None
    ipv4 = None
    if spec.ipv4 is not None:
        cidr = spec.ipv4.cidr
        network, _, prefix = cidr.partition("/")
        gateway = spec.ipv4.gateway or _first_host(network)
        ipv4 = Ipv4Config(address=f"{gateway}/{prefix}",
                          dhcp_start=spec.ipv4.dhcp.start if spec.ipv4.dhcp else None,
                          dhcp_end=spec.ipv4.dhcp.end if spec.ipv4.dhcp else None)
    return NetworkConfig(
        name=NetworkName(f"vp-{net.metadata.name}"),
        forward="nat" if spec.type == "nat" else "none",
        bridge=spec.bridge,
        mtu=spec.mtu,
        ipv4=ipv4,
    )


def _first_host(network: str) -> str:
    parts = network.split(".")
    parts[-1] = str(int(parts[-1]) + 1)
    return ".".join(parts)


def plan_network(net: Network, ready_hosts: Sequence[HostName],
                 observed: Mapping[HostName, NetworkConfig | None]) -> Plan:
    want = network_config(net)
    if want is None:
        return Plan()
    actions = []
    for h in ready_hosts:
        seen = observed.get(h)
        if seen is None or _comparable(seen, want) != want:
            actions.append(EnsureNetwork(h, want, reason="network missing" if seen is None else "network differs"))
    return Plan(tuple(actions))


def _comparable(seen: NetworkConfig, want: NetworkConfig) -> NetworkConfig:
    """libvirt picks a bridge name when we leave it unset; that is not a difference."""
    if want.bridge is None:
        return NetworkConfig(seen.name, seen.forward, None, seen.mtu, seen.ipv4)
    return seen
