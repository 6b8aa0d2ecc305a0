"""The one place that renders and parses libvirt XML (domains, devices, pools, volumes, networks).

Rendering is built with ``xml.etree.ElementTree``, never by string formatting. Parsing reads only what the
model in ``reconcilers.domain`` manages and ignores everything libvirt adds by itself (PCI addresses,
implicit controllers, ``<emulator>``, ``<console>`` mirrors, memballoon, input devices, ``<clock>``,
``on_*`` actions, run-time aliases and targets), so that observing a domain we defined gives back the config
we rendered and re-planning stays quiet. Values libvirt fills in when we leave them unset (UUID, MAC
addresses, a NAT bridge name) are returned; the caller keeps them in status.

Normalizations (documented because they are lossy on purpose):
- machine ``pc-i440fx-X.Y`` / ``pc-q35-X.Y`` (what QEMU's driver expands ``pc`` / ``q35`` into) parse as
  ``pc`` / ``q35``; other machine types are not representable.
- ``spare_root_ports`` counts ``pcie-root-port`` controllers no device sits on (libvirt adds one port per
  PCI device on q35 by itself).
- a live XML of a ``host-model`` guest shows the expanded named model; compare CPU models on ``config``.

Anything we cannot represent raises :class:`CodecError`.
"""

from controller.adapters.libvirt.codec._xml import CodecError
from controller.adapters.libvirt.codec.domain import (
    METADATA_NS,
    USER_ALIAS_PREFIX,
    parse_domain,
    parse_owner,
    render_disk_device,
    render_domain,
    render_nic_device,
)
from controller.adapters.libvirt.codec.resources import (
    parse_host_uuid,
    parse_network,
    parse_pool,
    parse_pool_state,
    parse_volume,
    render_iscsi_secret,
    render_network,
    render_pool,
    render_test_host,
    render_volume,
)

__all__ = [
    "METADATA_NS",
    "USER_ALIAS_PREFIX",
    "CodecError",
    "parse_domain",
    "parse_host_uuid",
    "parse_network",
    "parse_owner",
    "parse_pool",
    "parse_pool_state",
    "parse_volume",
    "render_disk_device",
    "render_domain",
    "render_iscsi_secret",
    "render_network",
    "render_nic_device",
    "render_pool",
    "render_test_host",
    "render_volume",
]
