"""Adoption of a foreign domain: the objects (VM, Disks, StorageDomains, Networks) that reproduce it. Pure.

``plan_adoption`` maps one observed foreign domain to specs, then proves them: the DomainConfig those specs
make (``desired_domain``) must equal the domain's persistent config in everything the VM planner compares.
Whatever a spec cannot say is a problem, and a domain with any problem is not adopted: never a lossy
takeover. The VM gets two annotations, the host and the domain UUID it was adopted from; with them the VM
planner places the VM where the domain is and, when the spec still reproduces the domain, stamps our owner
metadata without redefining or restarting it (``StampOwner``).

Mapping: an image ``DIR/NAME.qcow2`` (``.img`` for raw) is the Disk ``NAME`` in the storage domain whose
directory is ``DIR`` (an existing posix/local one, or a new ``local`` one on this host); a block device
is a LUN Disk; empty cdrom/floppy drives are ``emptyDrives``; a NIC on a host bridge or user-mode network
uses an existing Network of that kind or a new one; libvirt's own networks other than ours (``vp-NAME``)
cannot be represented.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from reconcilers.domain import (
    DEFAULT_FEATURES,
    BlockSource,
    DiskDevice,
    DomainConfig,
    DomainType,
    FileSource,
    HostName,
    NicDevice,
    ObservedDomain,
)
from reconcilers.vm.domain import ResolvedDisk, ResolvedNetwork, config_differences, desired_domain
from specs.errors import error_message, error_path, format_path
from specs.kinds import KINDS, parse_resource
from specs.meta import Resource
from specs.quantity import format_quantity
from specs.vm import VirtualMachine

ADOPTED_FROM = "virtplane.io/adopted-from"  # annotation: the host the domain was adopted on
ADOPTED_UUID = "virtplane.io/adopted-uuid"  # annotation: the libvirt UUID of the adopted domain
API_VERSION = "virtplane.io/v1"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_EXT = {"qcow2": ".qcow2", "raw": ".img"}


@dataclass(frozen=True)
class AdoptContext:
    """What already exists, as the controller sees it. ``storage``: image directory -> StorageDomain name
    (posix and local domains this host sees); ``networks``: (kind, bridge or libvirt name) -> Network name,
    kind "bridge" | "user" | "network"; ``capacities``: image or device path -> virtual size in bytes."""

    host: HostName
    cluster: str
    domain_type: DomainType
    storage: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[tuple[str, str | None], str] = field(default_factory=dict)
    existing: Mapping[str, frozenset[str]] = field(default_factory=dict)  # kind -> names in the store
    capacities: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Adoption:
    domain: str
    objects: tuple[Resource, ...] = ()  # new objects to write (empty when refused)
    problems: tuple[str, ...] = ()

    @property
    def adoptable(self) -> bool:
        return not self.problems


def _doc(kind: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:63].rstrip("-") or "x"


class _Builder:
    """Collects documents, resolved devices and problems for one domain."""

    def __init__(self, ctx: AdoptContext, config: DomainConfig) -> None:
        self.ctx, self.config = ctx, config
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.problems: list[str] = []
        self.disks: dict[str, ResolvedDisk] = {}
        self.networks: dict[str, ResolvedNetwork] = {}

    def add(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        if name in self.ctx.existing.get(kind, frozenset()):
            self.problems.append(f"a {kind} named {name} already exists; rename or delete it first")
        self.docs.setdefault((kind, name), _doc(kind, name, spec))

    def storage_domain(self, directory: str) -> str:
        found = self.ctx.storage.get(directory)
        if found is not None:
            return found
        name = _slug(f"{self.ctx.host}-{directory}")
        self.add("StorageDomain", name, {"cluster": self.ctx.cluster, "type": "local", "local": {"path": directory},
                                         "hosts": [self.ctx.host]})
        return name

    def disk(self, d: DiskDevice) -> dict[str, Any] | None:
        src = d.source
        where = f"{d.device} {d.target}"
        if d.serial is not None:
            self.problems.append(f"{where} has serial {d.serial!r}, which a VM spec cannot set")
        if d.bus == "usb":
            self.problems.append(f"{where} is on bus usb, which a VM spec cannot use")
        if src is None:
            return None
        if isinstance(src, FileSource):
            directory, base = posixpath.split(src.path)
            ext = _EXT[d.format]
            stem = base[: -len(ext)] if base.endswith(ext) else ""
            if not _NAME.match(stem):
                self.problems.append(f"{where}: image {src.path} is not named NAME{ext} with NAME a valid object "
                                     f"name (a Disk NAME is the file NAME{ext}); rename the file")
                return None
            size = self.ctx.capacities.get(src.path)
            if size is None:
                self.problems.append(f"{where}: the size of {src.path} is unknown (the host could not read it)")
                return None
            sd = self.storage_domain(directory)
            spec: dict[str, Any] = {"storageDomain": sd, "format": d.format, "size": format_quantity(size)}
            if d.shareable:
                spec["shareable"] = True
            self.add("Disk", stem, spec)
            self.disks[stem] = ResolvedDisk(stem, src, d.format, d.shareable, True, sd)
            return self.attachment(stem, d)
        if isinstance(src, BlockSource):
            name = _slug(f"{self.config.name}-{d.target}")
            self.add("Disk", name, {"lun": {"blockPath": src.dev}, "reclaimPolicy": "Retain",
                                    **({"shareable": True} if d.shareable else {})})
            self.disks[name] = ResolvedDisk(name, src, "raw", d.shareable, True, None)
            return self.attachment(name, d)
        self.problems.append(f"{where}: network disks ({src.protocol}://{src.host}/{src.name}) cannot be adopted yet")
        return None

    @staticmethod
    def attachment(name: str, d: DiskDevice) -> dict[str, Any]:
        a: dict[str, Any] = {"disk": name}
        if d.bus != "virtio":
            a["bus"] = d.bus
        if d.device != "disk":
            a["device"] = d.device
        if d.boot_order is not None:
            a["bootOrder"] = d.boot_order
        if d.readonly and d.device == "disk":
            a["readOnly"] = True
        for key in ("cache", "discard", "io"):
            if getattr(d, key) is not None:
                a[key] = getattr(d, key)
        return a

    def nic(self, n: NicDevice) -> dict[str, Any] | None:
        if n.model == "e1000e":
            self.problems.append(f"NIC {n.name} has model e1000e, which a VM spec cannot choose")
        key: tuple[str, str | None] = (n.source_kind, n.source_name)
        net = self.ctx.networks.get(key)
        if n.source_kind == "network":
            if net is None:
                self.problems.append(f"NIC {n.name} is on libvirt network {n.source_name!r}, which no Network "
                                     "object manages (virtplane's are named vp-NAME)")
                return None
        elif net is None:
            net = "user" if n.source_kind == "user" else _slug(f"bridge-{n.source_name}")
            spec: dict[str, Any] = {"cluster": self.ctx.cluster, "type": n.source_kind}
            if n.source_kind == "bridge":
                spec["bridge"] = n.source_name
            self.add("Network", net, spec)
        self.networks[net] = ResolvedNetwork(net, n.source_kind, n.source_name, True)
        nic: dict[str, Any] = {"name": n.name, "network": net, "mac": n.mac}
        if n.model != "virtio":
            nic["model"] = n.model
        if n.boot_order is not None:
            nic["bootOrder"] = n.boot_order
        return nic


def _vm_spec(b: _Builder, observed: ObservedDomain) -> dict[str, Any]:
    c = b.config
    cpu: dict[str, Any] = {"cores": c.vcpus}
    if c.max_vcpus != c.vcpus:
        cpu["maxCores"] = c.max_vcpus
    if c.cpu_model is not None:
        cpu["model"] = c.cpu_model
    if c.cpu_topology is not None:
        t = c.cpu_topology
        cpu["topology"] = {"sockets": t.sockets, "dies": t.dies, "cores": t.cores, "threads": t.threads}
    if c.cpu_features:
        cpu["features"] = [{"name": f.name, "policy": f.policy} for f in c.cpu_features]
    memory: dict[str, Any] = {"size": format_quantity(c.memory_kib * 1024)}
    if c.max_memory_kib != c.memory_kib:
        memory["maxSize"] = format_quantity(c.max_memory_kib * 1024)
    if c.memory_hotplug is not None:
        memory["dimmSlots"] = c.memory_hotplug.slots
        memory["dimmMaxSize"] = format_quantity(c.memory_hotplug.max_kib * 1024)
    spec: dict[str, Any] = {"cluster": b.ctx.cluster, "runStrategy": "Always" if observed.active else "Halted",
                            "cpu": cpu, "memory": memory}
    if c.machine != "q35":
        spec["machine"] = c.machine
    boot: dict[str, Any] = {}
    if c.firmware != "bios":
        boot["firmware"] = c.firmware
    if c.kernel_boot is not None:
        boot |= {k: v for k, v in (("kernel", c.kernel_boot.kernel), ("initrd", c.kernel_boot.initrd),
                                   ("cmdline", c.kernel_boot.cmdline)) if v is not None}
    if c.boot_devices:
        boot["devices"] = list(c.boot_devices)
    if boot:
        spec["boot"] = boot
    disks = [a for d in c.disks if d.source is not None and (a := b.disk(d)) is not None]
    drives = [{"device": d.device, "bus": d.bus, **({"bootOrder": d.boot_order} if d.boot_order else {})}
              for d in c.disks if d.source is None and b.disk(d) is None]
    nics = [n for nic in c.nics if (n := b.nic(nic)) is not None]
    for key, value in (("disks", disks), ("emptyDrives", drives), ("nics", nics)):
        if value:
            spec[key] = value
    passthrough: dict[str, Any] = {}
    if c.extra_devices:
        passthrough["devices"] = list(c.extra_devices)
    if c.features != DEFAULT_FEATURES:
        passthrough["features"] = list(c.features)
    if c.extra_elements:
        passthrough["elements"] = list(c.extra_elements)
    if passthrough:
        spec["passthrough"] = passthrough
    return spec


def _validated(docs: list[dict[str, Any]], problems: list[str]) -> list[Resource]:
    objects = []
    for doc in docs:
        try:
            objects.append(parse_resource(doc))
        except ValidationError as exc:
            model = KINDS[doc["kind"]].model
            for e in exc.errors():
                problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {format_path(error_path(e))}: "
                                f"{error_message(e, model)}")
    return objects


def plan_adoption(observed: ObservedDomain, ctx: AdoptContext, unrepresented: tuple[str, ...] = ()) -> Adoption:
    """The objects that reproduce ``observed`` (a foreign domain), or the problems that forbid adopting it.
    ``unrepresented``: what the codec found it would lose (``controller.adapters.libvirt.codec``)."""
    name = observed.name
    if observed.owner is not None:
        return Adoption(name, problems=(f"already managed by {observed.owner.kind}/{observed.owner.name}",))
    if observed.config is None:
        return Adoption(name, problems=(observed.parse_error or "the definition cannot be read",))
    problems = list(unrepresented)
    if not observed.persistent:
        problems.append("a transient domain (no persistent definition) cannot be adopted")
    if observed.config.domain_type != ctx.domain_type:
        problems.append(f"domain type {observed.config.domain_type} differs from what virtplane uses on "
                        f"{ctx.host} ({ctx.domain_type})")
    b = _Builder(ctx, observed.config)
    vm_doc = _doc("VirtualMachine", name, _vm_spec(b, observed),
                  {ADOPTED_FROM: ctx.host, ADOPTED_UUID: observed.uuid})
    if name in ctx.existing.get("VirtualMachine", frozenset()):
        problems.append(f"a VirtualMachine named {name} already exists")
    problems += b.problems
    objects = _validated([*b.docs.values(), vm_doc], problems)
    vm = next((o for o in objects if isinstance(o, VirtualMachine)), None)
    if vm is not None and not problems:
        desired = desired_domain(vm, None, b.disks, b.networks, ctx.domain_type, observed)
        for diff in config_differences(desired, observed.config):
            if diff == "cpu_model" and desired.cpu_model is None:
                continue
            problems.append(f"the spec would not reproduce {diff}")
    if problems:
        return Adoption(name, problems=tuple(dict.fromkeys(problems)))
    return Adoption(name, objects=tuple(objects))


def adopting_host(vm: VirtualMachine, domains: Mapping[HostName, ObservedDomain]) -> HostName | None:
    """The host whose foreign domain this VM was adopted from, while that domain is still there."""
    annotations = vm.metadata.annotations or {}
    host = annotations.get(ADOPTED_FROM)
    if host is None:
        return None
    d = domains.get(HostName(host))
    if d is None or d.owner is not None or d.uuid != annotations.get(ADOPTED_UUID):
        return None
    return HostName(host)
