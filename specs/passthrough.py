"""What a spec may carry verbatim into a libvirt domain: libvirt XML the model has no field for. Pure.

A spec is not a command line: the server runs as root, so verbatim XML must not make libvirt or QEMU open
a file, a host device, a socket or a program the operator did not allow. This module is the one rule for
that, used by the specs (``VirtualMachine.spec.passthrough``) and by ``virtplane adopt`` (a foreign domain
with anything refused here is not adopted). The rule is an allow-list:

- device elements: ``graphics`` (vnc/spice, listening on an address, not a socket), ``video``, ``input``
  (mouse/keyboard/tablet), ``sound``, ``audio`` (none/spice), ``watchdog``, ``rng`` (random backend on
  ``/dev/urandom`` or ``/dev/random``), ``memballoon``, ``panic``, ``hub``, ``redirdev`` (spicevmc), and the
  character devices ``serial``/``console``/``channel`` of types pty, null, vc, spicevmc, or a unix socket
  whose path libvirt picks (no ``path``);
- domain elements: ``clock``, ``on_poweroff``/``on_reboot``/``on_crash``/``on_lockfailure``, ``pm``,
  ``title``, ``description``;
- ``features`` children (acpi, apic, vmport, hyperv, kvm, smm, pae...), none of which names a host resource;
- nowhere an attribute naming a host path, device, socket or directory (``path``, ``file``, ``dev``,
  ``socket``, ``dir``, ``tls``, ``tlsPath``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

DEVICE_TAGS = frozenset(
    {"graphics", "video", "input", "sound", "audio", "watchdog", "rng", "memballoon", "panic", "hub",
     "redirdev", "serial", "console", "channel", "controller"}
)
DOMAIN_TAGS = frozenset(
    {"clock", "on_poweroff", "on_reboot", "on_crash", "on_lockfailure", "pm", "title", "description"}
)
_HOST_ATTRS = frozenset({"path", "file", "dev", "socket", "dir", "tls", "tlspath"})
_CHAR_TYPES = frozenset({"pty", "null", "vc", "spicevmc", "unix"})
_RANDOM_SOURCES = frozenset({"/dev/urandom", "/dev/random"})
_GRAPHICS = frozenset({"vnc", "spice"})
_INPUTS = frozenset({"mouse", "keyboard", "tablet"})


def parse_snippet(text: str) -> ET.Element:
    """One XML element, or ValueError saying why not."""
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc


def _host_attribute(el: ET.Element) -> str | None:
    for node in el.iter():
        for attr, value in node.attrib.items():
            if attr.lower() in _HOST_ATTRS:
                return f"<{node.tag} {attr}={value!r}> names a host resource"
        if node.tag == "listen" and node.get("type") == "socket":
            return "<listen type='socket'> names a host socket"
    return None


def device_refusal(el: ET.Element) -> str | None:
    """Why this device element may not be passed through (None: it may)."""
    tag = el.tag
    if tag not in DEVICE_TAGS:
        return f"device <{tag}> is not supported (passthrough allows {', '.join(sorted(DEVICE_TAGS))})"
    if tag in ("serial", "console", "channel") and el.get("type", "pty") not in _CHAR_TYPES:
        return f"<{tag} type={el.get('type')!r}> reaches a host file, device or network endpoint"
    if tag == "graphics" and el.get("type") not in _GRAPHICS:
        return f"<graphics type={el.get('type')!r}> is not supported (vnc or spice)"
    if tag == "input" and el.get("type") not in _INPUTS:
        return f"<input type={el.get('type')!r}> passes a host input device through"
    if tag == "controller" and el.get("type") not in ("usb", "scsi"):
        return f"<controller type={el.get('type')!r}> is chosen by libvirt (usb and scsi controllers only)"
    if tag == "redirdev" and el.get("type") != "spicevmc":
        return f"<redirdev type={el.get('type')!r}> reaches a host resource (spicevmc only)"
    if tag == "rng":
        backend = el.find("backend")
        if backend is None or backend.get("model") != "random" or (backend.text or "").strip() not in _RANDOM_SOURCES:
            return "<rng> must use <backend model='random'> on /dev/urandom or /dev/random"
        return _host_attribute_except(el, backend)
    return _host_attribute(el)


def _host_attribute_except(el: ET.Element, allowed: ET.Element) -> str | None:
    for child in el:
        if child is not allowed:
            why = _host_attribute(child)
            if why is not None:
                return why
    return None


def element_refusal(el: ET.Element) -> str | None:
    """Why this domain-level element may not be passed through (None: it may)."""
    if el.tag not in DOMAIN_TAGS:
        return f"domain element <{el.tag}> is not supported (passthrough allows {', '.join(sorted(DOMAIN_TAGS))})"
    return _host_attribute(el)


def feature_refusal(el: ET.Element) -> str | None:
    """Why this ``<features>`` child may not be passed through (None: it may)."""
    return _host_attribute(el)
