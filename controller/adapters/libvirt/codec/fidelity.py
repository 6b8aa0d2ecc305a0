"""What a domain XML holds that the model would not reproduce: the codec's "lost nothing" check.

``unrepresented(xml)`` parses the XML, renders the config back, and compares the two documents as sets of
facts (one per element, attribute and text, keyed by path; disks by target, NICs by MAC). A fact of the
original missing from the rendering is lost. Not counted, because libvirt writes them by itself or
assigns them at run time: ``<metadata>``, ``<resource>``, ``<seclabel>``, ``<emulator>``, PCI/drive
addresses and run-time aliases, implicit devices (see ``passthrough``), libvirt's defaults (``placement``,
``driver name='qemu'``, CPU ``check``/``match``/``migratable``, the serial port's target model, a NIC's
host-side ``<target>``...), the machine type's version suffix and the firmware files of an ``efi`` guest.
Memory sizes compare in bytes, whatever their unit.

Everything carried verbatim is also checked against ``specs.passthrough`` (what a spec may hold), so a
domain with, say, a ``<hostdev>`` or a serial port logging to a host file is listed as not representable.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter

from controller.adapters.libvirt.codec._xml import CodecError, root, scaled_bytes
from controller.adapters.libvirt.codec.domain import DEFAULT_ELEMENTS, parse_domain, render_domain
from controller.adapters.libvirt.codec.passthrough import canonical, is_implicit_device
from specs.passthrough import device_refusal, element_refusal, feature_refusal

_SKIPPED_ELEMENTS = frozenset({"metadata", "resource", "seclabel", "id"})
_MEMORY = frozenset({"memory", "currentMemory", "maxMemory"})
_IGNORED = tuple(
    re.compile(p)
    for p in (
        r"^vcpu@placement=static$",
        r"^os/boot(@dev=hd)?$",  # libvirt's default boot device
        r"^os/type@machine=",
        r"^os/type@arch=x86_64$",
        r"^os/(loader|nvram)",
        r"^cpu@(check|match|migratable)=",
        r"^cpu/model@fallback=",
        r"^cpu/topology@dies=1$",
        r"^devices/disk\[[^]]*\]/driver@name=qemu$",
        r"^devices/disk\[[^]]*\]/backingStore",
        r"^devices/disk\[[^]]*\]/source@index=",
        r"^devices/interface\[[^]]*\]/target",
        r"^devices/interface\[[^]]*\]/source@(portid|bridge)=",
        r"^devices/serial0/target",
        r"^devices/serial0/source@append=",
        r"^devices/serial0/log",  # reported by passthrough rules when the log is a host file (see below)
    )
)


def _key(el: ET.Element, serial_index: int) -> str:
    if el.tag == "disk":
        target = el.find("target")
        return f"disk[{target.get('dev') if target is not None else '?'}]"
    if el.tag == "interface":
        mac = el.find("mac")
        return f"interface[{mac.get('address', '').lower() if mac is not None else '?'}]"
    if el.tag == "serial" and serial_index == 0:
        return "serial0"
    return el.tag


def _flatten(el: ET.Element, path: str, out: Counter[str]) -> None:
    out[path] += 1
    for attr, value in el.attrib.items():
        if path in _MEMORY and attr == "unit":
            continue
        out[f"{path}@{attr}={value}"] += 1
    if el.text and el.text.strip():
        value = el.text.strip()
        if path in _MEMORY:
            value = str(scaled_bytes(el, "KiB"))
        out[f"{path}#text={value}"] += 1
    for child in el:
        _flatten(child, f"{path}/{child.tag}", out)


def _facts(xml: str) -> Counter[str]:
    dom = root(xml, "domain")
    out: Counter[str] = Counter()
    for attr, value in dom.attrib.items():
        if attr != "id":
            out[f"@{attr}={value}"] += 1
    for child in dom:
        if child.tag in _SKIPPED_ELEMENTS or canonical(child) in DEFAULT_ELEMENTS:
            continue
        if child.tag != "devices":
            _flatten(ET.fromstring(canonical(child)), child.tag, out)
            continue
        serials = child.findall("serial")
        first = serials[0] if serials and serials[0].get("type") in ("pty", "file") else None
        for device in child:
            if is_implicit_device(device, first):
                continue
            key = _key(device, 0 if device is first else 1)
            _flatten(ET.fromstring(canonical(device)), f"devices/{key}", out)
    return out


def _refusals(xml: str) -> list[str]:
    """Verbatim content a spec may not carry (specs.passthrough)."""
    config, _ = parse_domain(xml)
    found = []
    for text in config.extra_devices:
        why = device_refusal(ET.fromstring(text))
        if why:
            found.append(why)
    for text in config.extra_elements:
        why = element_refusal(ET.fromstring(text))
        if why:
            found.append(why)
    for text in config.features:
        why = feature_refusal(ET.fromstring(text))
        if why:
            found.append(why)
    serial = config.serial
    if serial is not None and serial.path is not None:
        found.append(f"the first serial port logs to the host file {serial.path}")
    return found


def unrepresented(xml: str) -> tuple[str, ...]:
    """What of this domain XML the model would lose or a spec may not carry; empty = representable."""
    try:
        rendered = render_domain(parse_domain(xml)[0])
    except CodecError as exc:
        return (str(exc),)
    lost = _facts(xml) - _facts(rendered)
    missing = sorted(f"not reproduced: {fact}" for fact in lost if not any(p.match(fact) for p in _IGNORED))
    return tuple(_refusals(xml) + missing)
