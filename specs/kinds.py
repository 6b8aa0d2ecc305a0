"""The registry of kinds: names users type, models, table columns, and parsing by ``kind``."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from specs.cluster import Cluster, ClusterStatus
from specs.disk import Disk, DiskStatus
from specs.gluster import GlusterVolume, GlusterVolumeStatus
from specs.host import Host, HostStatus
from specs.meta import Resource, StatusBase
from specs.migration import Migration, MigrationStatus
from specs.network import Network, NetworkStatus
from specs.pool import VirtualMachinePool, VirtualMachinePoolStatus
from specs.rbac import Role, RoleBinding, RoleBindingStatus, RoleStatus
from specs.snapshot import Snapshot, SnapshotStatus
from specs.storage import StorageDomain, StorageDomainStatus
from specs.versions import CONVERSIONS
from specs.vm import VirtualMachine, VirtualMachineStatus


@dataclass(frozen=True)
class Column:
    """A column of ``virtplane get``: header and a dotted path into {metadata, spec, status}. ``bar``: the
    value is a percentage, shown as a progress bar."""

    header: str
    path: str
    wide_only: bool = False
    bar: bool = False


@dataclass(frozen=True)
class KindInfo:
    kind: str
    singular: str
    plural: str
    short: tuple[str, ...]
    model: type[Resource]
    status_model: type[StatusBase]
    gitops: bool
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every lower-case name that resolves to this kind."""
        return (self.kind.lower(), self.singular, self.plural, *self.short)


class UnknownKind(ValueError):
    """``text`` names no kind; ``suggestion`` is the closest kind, if any."""

    def __init__(self, text: str, suggestion: str | None) -> None:
        self.text = text
        self.suggestion = suggestion
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        super().__init__(f"unknown kind {text!r}{hint}; expected one of: {', '.join(KINDS)}")


_NAME = Column("NAME", "metadata.name")
_AGE = Column("AGE", "metadata.creationTimestamp")
_CLUSTER = Column("CLUSTER", "spec.cluster")
_PHASE = Column("PHASE", "status.phase")


def _info(
    model: type[Resource],
    status: type[StatusBase],
    short: tuple[str, ...],
    columns: tuple[Column, ...],
    *,
    gitops: bool = True,
) -> KindInfo:
    kind = model.model_fields["kind"].annotation.__args__[0]  # type: ignore[union-attr]
    singular = kind.lower()
    return KindInfo(kind, singular, singular + "s", short, model, status, gitops, columns)


KINDS: dict[str, KindInfo] = {
    info.kind: info
    for info in (
        _info(
            Cluster,
            ClusterStatus,
            ("cl",),
            (
                _NAME,
                _PHASE,
                Column("HOSTS", "status.hostsTotal"),
                Column("READY", "status.hostsReady"),
                Column("POLICY", "spec.scheduling.policy"),
                _AGE,
                Column("VMS", "status.vmsRunning", True),
                Column("LEADER", "status.leader", True),
            ),
        ),
        _info(
            Host,
            HostStatus,
            ("ho",),
            (
                _NAME,
                _CLUSTER,
                _PHASE,
                Column("MAINTENANCE", "spec.maintenance"),
                Column("VMS", "status.vms"),
                _AGE,
                Column("URI", "spec.uri", True),
                Column("CPUS", "status.capacity.cpus", True),
                Column("MEMORY", "status.capacity.memory", True),
                Column("LIBVIRT", "status.libvirtVersion", True),
                Column("QEMU", "status.qemuVersion", True),
            ),
        ),
        _info(
            StorageDomain,
            StorageDomainStatus,
            ("sd",),
            (
                _NAME,
                _CLUSTER,
                Column("TYPE", "spec.type"),
                _PHASE,
                Column("AVAILABLE", "status.available"),
                _AGE,
                Column("SHARED", "spec.shared", True),
                Column("CAPACITY", "status.capacity", True),
            ),
        ),
        _info(
            GlusterVolume,
            GlusterVolumeStatus,
            ("gv", "glustervolumes"),
            (
                _NAME,
                _CLUSTER,
                Column("REPLICA", "spec.replica"),
                _PHASE,
                Column("TYPE", "status.type"),
                _AGE,
                Column("ID", "status.volumeId", True),
            ),
        ),
        _info(
            Network,
            NetworkStatus,
            ("net",),
            (
                _NAME,
                _CLUSTER,
                Column("TYPE", "spec.type"),
                _PHASE,
                _AGE,
                Column("BRIDGE", "status.bridge", True),
                Column("VLAN", "spec.vlan", True),
                Column("CIDR", "spec.ipv4.cidr", True),
            ),
        ),
        _info(
            Disk,
            DiskStatus,
            (),
            (
                _NAME,
                Column("DOMAIN", "spec.storageDomain"),
                Column("SIZE", "spec.size"),
                Column("FORMAT", "spec.format"),
                _PHASE,
                Column("ATTACHED", "status.attachedTo"),
                _AGE,
                Column("PATH", "status.path", True),
                Column("ALLOCATION", "status.allocation", True),
                Column("PROGRESS", "status.progress", True, bar=True),
            ),
        ),
        _info(
            VirtualMachine,
            VirtualMachineStatus,
            ("vm", "vms"),
            (
                _NAME,
                _CLUSTER,
                Column("HOST", "status.host"),
                _PHASE,
                Column("CPU", "spec.cpu.cores"),
                Column("MEMORY", "spec.memory.size"),
                _AGE,
                Column("RUN", "spec.runStrategy", True),
                Column("HA", "spec.highAvailability.enabled", True),
                Column("UUID", "status.uuid", True),
            ),
        ),
        _info(
            VirtualMachinePool,
            VirtualMachinePoolStatus,
            ("vmpool", "vmpools", "pool", "pools"),
            (
                _NAME,
                _CLUSTER,
                Column("DESIRED", "spec.replicas"),
                Column("CURRENT", "status.replicas"),
                Column("READY", "status.readyReplicas"),
                _AGE,
                Column("BASE", "spec.baseDisk", True),
            ),
        ),
        _info(
            Snapshot,
            SnapshotStatus,
            ("snap", "snaps"),
            (
                _NAME,
                Column("VM", "spec.vm"),
                Column("MEMORY", "spec.memory"),
                _PHASE,
                _AGE,
                Column("DESCRIPTION", "spec.description", True),
            ),
        ),
        _info(
            Migration,
            MigrationStatus,
            ("mig", "migs"),
            (
                _NAME,
                Column("VM", "spec.vm"),
                Column("SOURCE", "status.sourceHost"),
                Column("TARGET", "status.targetHost"),
                _PHASE,
                Column("PROGRESS", "status.percent", bar=True),
                _AGE,
                Column("REMAINING", "status.dataRemaining", True),
                Column("DOWNTIME_MS", "status.downtimeMs", True),
            ),
            gitops=False,
        ),
        _info(
            Role,
            RoleStatus,
            (),
            (_NAME, Column("DESCRIPTION", "spec.description"), _AGE),
        ),
        _info(
            RoleBinding,
            RoleBindingStatus,
            ("rb", "rbs"),
            (
                _NAME,
                Column("ROLE", "spec.role"),
                Column("CLUSTERS", "spec.clusters"),
                _PHASE,
                _AGE,
                Column("SUBJECTS", "spec.subjects", True),
            ),
        ),
    )
}

_BY_NAME: dict[str, KindInfo] = {name: info for info in KINDS.values() for name in info.names}


def build_models() -> None:
    """Build every kind's validators now. Models are built on first use (``defer_build``: a CLI that only
    reads YAML and sends it never pays for them); a server builds them at start-up, once, before its
    threads validate anything."""
    for info in KINDS.values():
        info.model.model_rebuild(force=True)
        info.status_model.model_rebuild(force=True)


def resolve_kind(text: str) -> KindInfo:
    """The kind named by ``text`` (``VirtualMachine``, ``virtualmachines``, ``vm``, ...; case-insensitive)."""
    info = _BY_NAME.get(text.strip().lower())
    if info is not None:
        return info
    close = difflib.get_close_matches(text.strip().lower(), list(_BY_NAME), n=1, cutoff=0.6)
    raise UnknownKind(text, _BY_NAME[close[0]].kind if close else None)


def parse_resource(data: Mapping[str, Any]) -> Resource:
    """Validate ``data`` as the model of ``data["kind"]`` (exact kind name, as in YAML).

    Raises pydantic.ValidationError, including for a missing or unknown kind (loc ``("kind",)``). A document
    in an older API version is converted to the storage version first (``specs.versions``).
    """
    data = CONVERSIONS.upgrade(data)
    kind = data.get("kind")
    info = KINDS.get(kind) if isinstance(kind, str) else None
    if info is None:
        if isinstance(kind, str):
            try:
                hint = f"; did you mean {resolve_kind(kind).kind}?"
            except UnknownKind as exc:
                hint = f"; did you mean {exc.suggestion}?" if exc.suggestion else ""
            message = f"unknown kind {kind!r}{hint} (expected one of: {', '.join(KINDS)})"
        else:
            message = f"kind is required: one of {', '.join(KINDS)}"
        error = InitErrorDetails(
            type=PydanticCustomError("unknown_kind", "{message}", {"message": message}),
            loc=("kind",),
            input=kind,
        )
        raise ValidationError.from_exception_data("Resource", [error])
    return info.model.model_validate(data)
