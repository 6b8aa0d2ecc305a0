"""Host: one libvirtd reached by URI, with its power-management (fence) agent."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import parse_qsl

from pydantic import AfterValidator, Field, model_validator

from specs.common import HostAddress, check_absolute_path
from specs.errors import field_error
from specs.meta import Name, Resource, StatusBase, StrictModel
from specs.quantity import Quantity, parse_quantity

_URI = re.compile(
    r"^(?P<scheme>test|qemu(\+(?P<transport>unix|ssh|libssh|libssh2|tls|tcp))?)://"
    r"(?P<authority>[^/?#\s]*)(?P<path>/[^?#\s]*)(\?(?P<query>[^#\s]*))?$"
)
URI_EXAMPLES = "qemu+ssh://root@host1/system, qemu+tls://host1/system, qemu:///system, test:///default"
# user@host:port of a remote URI: no option-looking names ("-oProxyCommand=..."), nothing a shell would read.
_AUTHORITY = re.compile(
    r"^((?P<user>[A-Za-z0-9_][A-Za-z0-9._-]{0,63})@)?"
    r"(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\])(:(?P<port>[0-9]{1,5}))?$"
)
# Query parameters a spec may give, per transport. Everything else is refused: ``command`` and ``netcat``
# name programs libvirt runs (as the server's user: root), ``proxy``/``name``/``sshauth`` change what the
# client runs or where it goes. Paths (socket, keyfile, pkipath, known_hosts) are confined further by the
# server's configuration (specs.confinement).
_QUERY: dict[str | None, frozenset[str]] = {
    None: frozenset(),
    "unix": frozenset({"socket", "mode"}),
    "ssh": frozenset({"keyfile", "known_hosts", "no_verify", "no_tty", "mode", "socket"}),
    "libssh": frozenset({"keyfile", "known_hosts", "known_hosts_verify", "mode", "socket"}),
    "libssh2": frozenset({"keyfile", "known_hosts", "known_hosts_verify", "mode", "socket"}),
    "tls": frozenset({"pkipath", "no_verify", "tls_priority"}),
    "tcp": frozenset(),
}
URI_PATH_PARAMS = ("socket", "keyfile", "pkipath", "known_hosts")
_QUERY_VALUE = re.compile(r"^[A-Za-z0-9._,:/+=@-]{1,1024}$")
_TEST_QUERY = frozenset({"cpus", "memory"})


def uri_query(value: str) -> list[tuple[str, str]]:
    """The decoded query parameters of a libvirt URI, in order (repeats kept)."""
    match = _URI.match(value)
    return parse_qsl(match["query"] or "", keep_blank_values=True) if match else []


def check_libvirt_uri(value: str) -> str:
    """A libvirt connection URI this project can drive (test, qemu and its remote transports), with only
    the query parameters that cannot make the server run a program or read a file it chose."""
    match = _URI.match(value)
    if match is None:
        raise ValueError(f"expected a libvirt URI like {URI_EXAMPLES}, got {value!r}")
    scheme, path, authority = match["scheme"], match["path"], match["authority"]
    if scheme == "test":
        _check_test_uri(value, authority, path)
        return value
    if path not in ("/system", "/session"):
        raise ValueError(f"a qemu URI ends in /system or /session, got {value!r} (e.g. {URI_EXAMPLES})")
    transport = match["transport"]
    if transport in ("ssh", "libssh", "libssh2", "tls", "tcp") and not authority:
        raise ValueError(
            f"a remote {scheme} URI needs a host name, e.g. {scheme}://host1/system; got {value!r}"
        )
    if transport in ("unix", None) and authority:
        raise ValueError(
            f"a {scheme} URI is local: write qemu+unix:///system?socket=/path/libvirt-sock, got {value!r}"
        )
    if authority and not _AUTHORITY.match(authority):
        raise ValueError(f"expected [user@]host[:port] in the URI, like root@host1:22, got {authority!r}")
    _check_query(value, transport)
    return value


def _check_test_uri(value: str, authority: str, path: str) -> None:
    # Any other test:/// path is a file libvirt parses (as root): test:///etc/shadow would read it.
    if authority or path != "/default":
        raise ValueError(
            f"the only test URI is test:///default (libvirt's simulator, optionally ?cpus=N&memory=GiB), "
            f"got {value!r}"
        )
    seen: set[str] = set()
    for key, item in uri_query(value):
        if key not in _TEST_QUERY or key in seen:
            raise ValueError(f"test:///default takes only cpus=N and memory=GiB, once each; got {key!r} in {value!r}")
        if not item.isdigit() or not 0 < int(item) <= 1 << 20:
            raise ValueError(f"test:///default?{key}= expects a positive whole number, got {item!r}")
        seen.add(key)


def _check_query(value: str, transport: str | None) -> None:
    allowed = _QUERY[transport]
    seen: set[str] = set()
    for key, item in uri_query(value):
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise ValueError(
                f"URI parameter {key!r} is not allowed for {'qemu+' + transport if transport else 'qemu'} "
                f"URIs (allowed: {names}); parameters that run programs (command, netcat) never are"
            )
        if key in seen:
            raise ValueError(f"URI parameter {key!r} is given twice in {value!r}")
        seen.add(key)
        if not _QUERY_VALUE.match(item):
            raise ValueError(f"URI parameter {key}={item!r}: expected letters, digits and ._,:/+=@- only")
        if key in URI_PATH_PARAMS:
            check_absolute_path(item)


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
