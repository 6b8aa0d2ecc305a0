"""Values and errors of power management: what an agent was asked, what it answered, how it failed.

```
PowerError(kind, result)            an agent could not do what was asked; ``result`` is the attempt
├── AgentMissing                    the agent program (fence_ipmilan, ssh, ...) is not installed
├── AgentTimeout                    no answer within the deadline; the program was killed
├── AgentUnreachable                the device (BMC, Redfish service, sshd) does not answer at all
├── AgentAuthFailed                 the device answers but refuses our login (user, password, privilege)
├── AgentFailed                     anything else the agent reported as failed
└── PowerConfigError                our side is wrong: bad spec, secret missing or outside its directory
```

Decisions are made on :class:`ErrorKind` and :class:`PowerState`, never on ``message``, which is for
display only and never holds a password (every agent output is redacted before it lands here).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

AgentName = NewType("AgentName", str)


class PowerState(enum.Enum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class PowerAction(enum.Enum):
    STATUS = "status"
    ON = "on"
    OFF = "off"
    REBOOT = "reboot"


class ErrorKind(enum.Enum):
    AGENT_MISSING = "AgentMissing"
    TIMEOUT = "Timeout"
    UNREACHABLE = "Unreachable"
    AUTH_FAILED = "AuthFailed"
    FAILED = "Failed"
    CONFIG = "ConfigError"


@dataclass(frozen=True)
class PowerResult:
    """One attempt of one action. ``state`` is the power state the agent reported (for ``status``) or
    the state the action leaves the machine in when it succeeded (``off`` -> OFF); UNKNOWN otherwise.
    ``error`` is None when ``ok``."""

    agent: AgentName
    action: PowerAction
    ok: bool
    state: PowerState
    duration_s: float
    message: str
    error: ErrorKind | None = None

    def to_status(self) -> dict[str, object]:
        """The attempt as it goes into Host status and events (plain JSON; no secret is ever in it)."""
        return {
            "agent": self.agent,
            "action": self.action.value,
            "ok": self.ok,
            "state": self.state.value,
            "durationSeconds": round(self.duration_s, 3),
            "message": self.message,
            **({"error": self.error.value} if self.error else {}),
        }


class PowerError(Exception):
    """Base of the tree above. ``result`` records the failed attempt (``ok`` False, ``error`` set)."""

    kind = ErrorKind.FAILED

    def __init__(self, result: PowerResult) -> None:
        super().__init__(f"{result.agent} {result.action.value}: {result.message}")
        self.result = result


class AgentMissing(PowerError):
    kind = ErrorKind.AGENT_MISSING


class AgentTimeout(PowerError):
    kind = ErrorKind.TIMEOUT


class AgentUnreachable(PowerError):
    kind = ErrorKind.UNREACHABLE


class AgentAuthFailed(PowerError):
    kind = ErrorKind.AUTH_FAILED


class AgentFailed(PowerError):
    kind = ErrorKind.FAILED


class PowerConfigError(PowerError):
    kind = ErrorKind.CONFIG


ERRORS: dict[ErrorKind, type[PowerError]] = {
    cls.kind: cls
    for cls in (AgentMissing, AgentTimeout, AgentUnreachable, AgentAuthFailed, AgentFailed, PowerConfigError)
}


def failure(
    kind: ErrorKind, agent: AgentName, action: PowerAction, duration_s: float, message: str
) -> PowerError:
    """The typed error for ``kind``, carrying its failed attempt."""
    result = PowerResult(agent, action, False, PowerState.UNKNOWN, duration_s, message, kind)
    return ERRORS[kind](result)
