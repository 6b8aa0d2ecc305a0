"""Shared XML helpers of the codec (private)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TypeVar, get_args

from reconcilers.domain import (
    CpuFeaturePolicy,
    DiskBus,
    DiskCache,
    DiskDeviceKind,
    DiskDiscard,
    DiskIo,
    DomainType,
    ForwardMode,
    ImageFormat,
    NetworkDiskProtocol,
    NicModel,
    NicSourceKind,
)

_L = TypeVar("_L", bound=str)


USER_ALIAS_PREFIX = "ua-"


class CodecError(ValueError):
    """The XML holds something the typed model cannot represent (or is not XML at all)."""


# ================================================================= helpers


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def to_string(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def root(xml: str, tag: str) -> ET.Element:
    try:
        el = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise CodecError(f"not well-formed XML: {exc}") from exc
    if el.tag != tag:
        raise CodecError(f"expected a <{tag}> document, got <{el.tag}>")
    return el


def literal(value: str | None, choices: tuple[_L, ...], what: str) -> _L:
    if value not in choices:
        raise CodecError(f"{what} {value!r} is not supported (expected one of {', '.join(choices)})")
    return value


DOMAIN_TYPES: tuple[DomainType, ...] = get_args(DomainType)
DISK_BUSES: tuple[DiskBus, ...] = get_args(DiskBus)
IMAGE_FORMATS: tuple[ImageFormat, ...] = get_args(ImageFormat)
PROTOCOLS: tuple[NetworkDiskProtocol, ...] = get_args(NetworkDiskProtocol)
NIC_KINDS: tuple[NicSourceKind, ...] = get_args(NicSourceKind)
NIC_MODELS: tuple[NicModel, ...] = get_args(NicModel)
FORWARD_MODES: tuple[ForwardMode, ...] = get_args(ForwardMode)
DISK_DEVICES: tuple[DiskDeviceKind, ...] = get_args(DiskDeviceKind)
DISK_CACHES: tuple[DiskCache, ...] = get_args(DiskCache)
DISK_DISCARDS: tuple[DiskDiscard, ...] = get_args(DiskDiscard)
DISK_IOS: tuple[DiskIo, ...] = get_args(DiskIo)
CPU_POLICIES: tuple[CpuFeaturePolicy, ...] = get_args(CpuFeaturePolicy)


def text(el: ET.Element | None) -> str | None:
    return None if el is None or el.text is None else el.text.strip()


def req_text(parent: ET.Element, path: str) -> str:
    value = text(parent.find(path))
    if not value:
        raise CodecError(f"<{path}> is missing")
    return value


_UNITS = {
    "b": 1, "bytes": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}  # fmt: skip


def scaled_bytes(el: ET.Element | None, default_unit: str) -> int | None:
    if el is None or not el.text:
        return None
    unit = el.get("unit", default_unit).lower()
    if unit not in _UNITS:
        raise CodecError(f"unknown unit {unit!r} in <{el.tag}>")
    return int(el.text.strip()) * _UNITS[unit]


def kib(el: ET.Element | None, what: str) -> int:
    value = scaled_bytes(el, "KiB")
    if value is None:
        raise CodecError(f"<{what}> is missing")
    return value // 1024
