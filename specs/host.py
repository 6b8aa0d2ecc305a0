"""Host: one libvirtd reached by URI, with its power-management (fence) agent."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from specs.common import HostAddress
from specs.errors import field_error
from specs.meta import Name, Resource, StatusBase, StrictModel
from specs.quantity import Quantity, parse_quantity

_URI = re.compile(
    r"^(?P<scheme>test|qemu(\+(?P<transport>unix|ssh|libssh|libssh2|tls|tcp))?)://"
    r"(?P<authority>[^/?#\s]*)(?P<path>/[^?#\s]*)(\?(?P<query>[^#\s]*))?$"
)
URI_EXAMPLES = "qemu+ssh://root@host1/system, qemu+tls://host1/system, qemu:///system, test:///default"


def check_libvirt_uri(value: str) -> str:
    """A libvirt connection URI this project can drive (test, qemu and its remote transports)."""
    match = _URI.match(value)
    if match is None:
        raise ValueError(f"expected a libvirt URI like {URI_EXAMPLES}, got {value!r}")
    scheme, path, authority = match["scheme"], match["path"], match["authority"]
    if scheme.startswith("qemu") and path not in ("/system", "/session"):
        raise ValueError(f"a qemu URI ends in /system or /session, got {value!r} (e.g. {URI_EXAMPLES})")
    if match["transport"] in ("ssh", "libssh", "libssh2", "tls", "tcp") and not authority:
        raise ValueError(
            f"a remote {scheme} URI needs a host name, e.g. {scheme}://host1/system; got {value!r}"
        )
    if match["transport"] == "unix" and authority:
        raise ValueError(
            f"a qemu+unix URI is local: write qemu+unix:///system?socket=/path/libvirt-sock, got {value!r}"
        )
    return value


LibvirtUri = Annotated[str, AfterValidator(check_libvirt_uri)]


class PowerManagement(StrictModel):
    """The fence agent used to power the host off/on (HA fencing, power saving)."""

    agent: Literal["ipmilan", "redfish", "ssh", "lab", "none"] = Field(
        description="ipmilan/redfish: the host's BMC; ssh: 'poweroff' over ssh (cannot fence a hung host); "
        "lab: a simulated host of `virtplane lab`; none: no power management (no fencing, no power saving)."
    )
    address: HostAddress | None = Field(default=None, description="BMC (or ssh) address of the host.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="Port of the agent, if not its default."
    )
    username: str | None = Field(default=None, min_length=1, description="User name for the agent.")
    passwordSecret: str | None = Field(
        default=None,
        min_length=1,
        description="Name of the server-side secret holding the agent password (never the password itself).",
    )
    options: dict[str, str] = Field(
        default_factory=dict, description="Extra agent options, e.g. {lanplus: 'true', privlvl: 'operator'}."
    )

    @model_validator(mode="after")
    def _agent_needs(self) -> PowerManagement:
        if self.agent in ("ipmilan", "redfish", "ssh") and self.address is None:
            raise field_error("address", f"agent {self.agent} needs address (the BMC or host address)")
        if self.agent in ("ipmilan", "redfish") and self.username is None:
            raise field_error("username", f"agent {self.agent} needs username (and usually passwordSecret)")
        if self.agent in ("none", "lab") and (self.address or self.username or self.passwordSecret):
            raise field_error("agent", f"agent {self.agent} takes no address/username/passwordSecret")
        return self


class HostReservation(StrictModel):
    """Capacity kept for the host itself and never given to VMs."""

    cpus: int = Field(default=0, ge=0, le=4096, description="Physical CPUs reserved for the host.")
    memory: Quantity = Field(default="0", description="Memory reserved for the host, e.g. 2Gi.")

    @property
    def memory_bytes(self) -> int:
        return parse_quantity(self.memory)


class HostSpec(StrictModel):
    """Desired state of a host."""

    cluster: Name = Field(description="Cluster this host belongs to.")
    uri: LibvirtUri = Field(
        description="libvirt connection URI, e.g. qemu+ssh://root@host1/system, qemu+tls://host1/system, "
        "qemu+unix:///system?socket=/run/lab/h1/libvirt-sock (lab) or test:///default (simulation)."
    )
    maintenance: bool = Field(
        default=False,
        description="true evacuates the host by live migration and schedules nothing new on it.",
    )
    powerManagement: PowerManagement | None = Field(
        default=None, description="Fence agent; required for HA restarts of this host's VMs."
    )
    migrationAddress: HostAddress | None = Field(
        default=None,
        description="Address other hosts use to send migration data here (a dedicated network); "
        "default: the URI's host.",
    )
    reserved: HostReservation = Field(
        default_factory=HostReservation, description="CPU and memory kept for the host's own use."
    )


class Host(Resource):
    """A libvirt host (``kind: Host``)."""

    kind: Literal["Host"] = Field(description="Always Host.")
    spec: HostSpec = Field(description="Desired state of the host.")


class HostResources(StrictModel):
    """CPU and memory amounts."""

    cpus: int = Field(ge=0, description="Logical CPUs (capacity) or vCPUs (allocation).")
    memory: int = Field(ge=0, description="Memory in bytes.")


class PowerAttempt(StrictModel):
    """One call of the host's fence agent (never holds a password)."""

    agent: str = Field(description="lab, ipmilan, redfish or ssh.")
    action: Literal["status", "on", "off", "reboot"] = Field(description="What the agent was asked.")
    ok: bool = Field(description="Whether the agent did it.")
    state: Literal["on", "off", "unknown"] = Field(description="Power state the agent reported or left.")
    durationSeconds: float = Field(ge=0, description="How long the call took.")
    message: str = Field(default="", description="What the agent said (redacted).")
    error: str | None = Field(default=None, description="AgentMissing, Timeout, Unreachable, AuthFailed, ...")


class PowerOperation(StrictModel):
    """The last fencing or power operation on the host: every attempt, and how it ended."""

    operation: Literal["fence", "power-off", "power-on"] = Field(description="What was done.")
    reason: str = Field(default="", description="Why it was done.")
    started: datetime = Field(description="When it started.")
    ok: bool = Field(description="Whether the host ended in the wanted power state (verified by a status call).")
    state: Literal["on", "off", "unknown"] = Field(description="Power state verified at the end.")
    durationSeconds: float = Field(ge=0, description="How long the whole operation took.")
    attempts: tuple[PowerAttempt, ...] = Field(default=(), description="Each agent call, in order.")


class HostStatus(StatusBase):
    """Observed state of a host."""

    phase: (
        Literal[
            "Connecting", "Ready", "Maintenance", "Unreachable", "NotResponding", "Fencing", "Fenced",
            "PoweringOff", "PoweredOff", "PoweringOn",
        ]
        | None
    ) = Field(
        default=None,
        description="Connecting (never answered yet), Ready, Maintenance, Unreachable (silent, within the "
        "cluster's ha.hostGracePeriodSeconds), NotResponding (silent past it), Fencing, Fenced (powered off by "
        "its agent after failing; its HA VMs are restarted elsewhere), PoweringOff/PoweredOff/PoweringOn "
        "(power saving).",
    )
    silentSince: datetime | None = Field(
        default=None, description="Since when the host has not answered (unset while it answers)."
    )
    power: PowerOperation | None = Field(
        default=None, description="The last fencing or power operation and each agent call it made."
    )
    capacity: HostResources | None = Field(default=None, description="What the host has.")
    allocation: HostResources | None = Field(default=None, description="What running VMs use.")
    libvirtVersion: str | None = Field(default=None, description="libvirt version on the host, e.g. 9.0.0.")
    qemuVersion: str | None = Field(default=None, description="QEMU version on the host, e.g. 7.2.0.")
    hostname: str | None = Field(default=None, description="Host name reported by libvirt.")
    cpuModel: str | None = Field(default=None, description="Host CPU model reported by libvirt.")
    lastHeartbeat: datetime | None = Field(default=None, description="Last time the host answered.")
    vms: int = Field(default=0, ge=0, description="Domains running on the host.")
