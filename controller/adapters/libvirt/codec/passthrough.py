"""Verbatim XML the model keeps without a field (private to the codec): canonical text, implicit devices.

Canonical text of an element: attributes sorted, whitespace-only text dropped, and what libvirt assigns at
define or run time removed — ``<address>``, run-time aliases (user aliases ``ua-*`` stay), the pty path of a
running character device, a graphics port chosen by ``autoport``, a channel's connection state and the
socket libvirt picks for it (``<source mode='bind'>``). Two XMLs of the same device (ours and libvirt's
echo of it) give the same text, so passthrough content compares quietly.

Implicit devices are those libvirt adds to every domain by itself; they are not part of a config (and a
domain that lacks them gets them back from libvirt): controllers (PCI root ports are counted apart), the PS/2
mouse and keyboard, the default virtio balloon, controllers other than USB and SCSI ones (whose models
matter to the devices on them), the console that mirrors the first serial port, and
libvirt's placeholder ``<audio type='none'>``.
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable

from controller.adapters.libvirt.codec._xml import USER_ALIAS_PREFIX

_RUNTIME_CHILDREN = ("address",)


def canonical(el: ET.Element) -> str:
    """The canonical text of one element (see the module docstring)."""
    node = copy.deepcopy(el)
    _strip(node)
    out: list[str] = []
    try:
        _serialize(node, out.append)
    except _Namespaced:
        return ET.tostring(node, encoding="unicode", short_empty_elements=True)
    return "".join(out)


class _Namespaced(Exception):
    """A tag or attribute in a namespace: ElementTree's serializer writes the prefixes and declarations."""


def _serialize(node: ET.Element, write: Callable[[str], object]) -> None:
    """What ``ET.tostring(node, encoding="unicode", short_empty_elements=True)`` writes for an element without
    namespaces, several times faster (it runs for every device of every domain parsed)."""
    tag = node.tag
    if not isinstance(tag, str) or tag.startswith("{"):
        raise _Namespaced
    write("<" + tag)
    for key, value in node.attrib.items():
        if key.startswith("{"):
            raise _Namespaced
        write(f' {key}="{_escape_attribute(value)}"')
    text = node.text
    if text or len(node):
        write(">")
        if text:
            write(_escape_text(text))
        for child in node:
            _serialize(child, write)
        write(f"</{tag}>")
    else:
        write(" />")
    if node.tail:
        write(_escape_text(node.tail))


def _escape_text(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    return text


def _escape_attribute(text: str) -> str:
    text = _escape_text(text)
    for char, entity in (('"', "&quot;"), ("\r", "&#13;"), ("\n", "&#10;"), ("\t", "&#09;")):
        if char in text:
            text = text.replace(char, entity)
    return text


def _strip(node: ET.Element) -> None:
    node.tail = None
    if node.text is not None and not node.text.strip():
        node.text = None
    elif node.text is not None:
        node.text = node.text.strip()
    for child in list(node):
        if child.tag in _RUNTIME_CHILDREN or (
            child.tag == "alias" and not child.get("name", "").startswith(USER_ALIAS_PREFIX)
        ):
            node.remove(child)
    _strip_runtime_attributes(node)
    for child in node:
        _strip(child)
    attrs = sorted(node.attrib.items())
    node.attrib.clear()
    node.attrib.update(attrs)


def _strip_runtime_attributes(node: ET.Element) -> None:
    tag = node.tag
    if tag in ("serial", "console", "channel", "parallel"):
        node.attrib.pop("tty", None)
        kind = node.get("type", "pty")
        for source in node.findall("source"):
            if kind == "pty" or (kind == "unix" and source.get("mode") == "bind"):
                source.attrib.pop("path", None)
                if not source.attrib or (kind == "unix" and source.attrib == {"mode": "bind"}):
                    node.remove(source)
        for target in node.findall("target"):
            target.attrib.pop("state", None)
    if tag == "graphics" and node.get("autoport") == "yes":
        for attr in ("port", "tlsPort", "websocket"):
            node.attrib.pop(attr, None)


def is_implicit_device(el: ET.Element, first_serial: ET.Element | None) -> bool:
    """A device libvirt adds by itself (module docstring)."""
    tag = el.tag
    if tag == "controller":
        return el.get("type") not in ("usb", "scsi")  # their models matter to the devices on them
    if tag == "emulator":
        return True
    if tag == "input":
        return el.get("bus") == "ps2" and el.get("type") in ("mouse", "keyboard")
    if tag == "memballoon":
        return canonical(el) == '<memballoon model="virtio" />'
    if tag == "audio":
        return el.get("type") == "none"
    if tag == "console":
        target = el.find("target")
        mirror = target is None or target.get("type") in (None, "serial")
        return mirror and first_serial is not None and el.get("type", "pty") == first_serial.get("type", "pty")
    return False
