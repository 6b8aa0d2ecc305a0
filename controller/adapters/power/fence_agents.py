"""Agents that run Debian's fence-agents programs (``fence_ipmilan``, ``fence_redfish``).

Every option goes on the program's **stdin** in the fence-agents ``key=value`` protocol (the program
is started with no arguments at all, which is what selects stdin), so nothing of it shows in ``ps``.
Exit codes (fence-agents' ``fencing.py``): 0 success (``status``: on), 2 (``status``: off), 1 failure.

A failure (exit 1) says nothing typed about its cause; the text differs by agent and version. So the
cause is decided by a structured probe after the failure (see :mod:`controller.adapters.power._probe`):
``ipmilan``: no RMCP presence pong -> unreachable; pong -> the session was refused (credentials,
privilege or cipher) -> AuthFailed, unless a ``status`` now succeeds (then the action itself failed).
``redfish``: no TCP answer -> unreachable; HTTP 401/403 with our credentials -> AuthFailed.

Passwords: ``fence_redfish`` gets ``password=`` on stdin and uses it in-process (HTTP basic auth).
``fence_ipmilan`` would put it on ``ipmitool``'s command line (``-P <password>``; ipmitool masks it
only after it started: measured here, a /proc poller saw it in 96 of 3,294 scans over 30 runs).
So it gets no password; ``ipmitool_path`` points at ``ipmitool-password-file`` (beside this module),
which swaps ``-P ''`` for ``-f <secret file>``: the password is read by ipmitool from the secret file.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from controller.adapters.power._probe import redfish_login_status, rmcp_ping, tcp_answers
from controller.adapters.power._process import ProgramOutcome, run_program
from controller.adapters.power.agent import PowerAgent
from controller.adapters.power.model import (
    AgentName,
    ErrorKind,
    PowerAction,
    PowerError,
    PowerResult,
    PowerState,
    failure,
)
from controller.adapters.secrets import Secret, SecretError, SecretRef, redact

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STATUS_OFF = 2

IPMITOOL_SHIM = Path(__file__).with_name("ipmitool-password-file")


@dataclass(frozen=True)
class FenceDevice:
    """Where and how to reach a fence device (from Host.spec.powerManagement)."""

    address: str
    username: str | None = None
    password: SecretRef | None = None
    port: int | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 60.0
    """Deadline of one program run; the program is killed after it."""
    power_timeout: int = 20
    """fence-agents' own wait for the state to change after on/off (``power_timeout``)."""


class FenceProgramAgent(PowerAgent):
    """Common part: build stdin, run the program, map the exit code, classify failures."""

    program: ClassVar[str]
    default_port: ClassVar[int]
    allowed_options: ClassVar[frozenset[str]]

    def __init__(self, device: FenceDevice, *, program_path: str | None = None) -> None:
        unknown = set(device.options) - self.allowed_options
        if unknown:
            raise ValueError(
                f"{self.name}: unknown options {sorted(unknown)}; allowed: {sorted(self.allowed_options)}"
            )
        for key, value in (("address", device.address), ("username", device.username or ""), *device.options.items()):
            if "\n" in value or "\r" in value or "\n" in key:
                raise ValueError(f"{self.name}: option {key!r} must be one line")
        self.device = device
        self.program_path = program_path

    @property
    def port(self) -> int:
        return self.device.port or self.default_port

    async def status(self) -> PowerResult:
        return await self._run(PowerAction.STATUS)

    async def on(self) -> PowerResult:
        return await self._run(PowerAction.ON)

    async def off(self) -> PowerResult:
        return await self._run(PowerAction.OFF)

    async def reboot(self) -> PowerResult:
        return await self._run(PowerAction.REBOOT)

    # -- to specialise ------------------------------------------------------------------------------

    def _credentials(self, action: PowerAction, secret: Secret | None) -> tuple[list[str], dict[str, str]]:
        """stdin lines and environment that carry the password."""
        return ([f"password={secret.reveal()}"] if secret else []), {}

    async def _classify(self, action: PowerAction, secret: Secret | None) -> ErrorKind:
        raise NotImplementedError

    # -- the run ------------------------------------------------------------------------------------

    def _stdin(self, action: PowerAction, secret: Secret | None) -> tuple[bytes, dict[str, str]]:
        lines = [
            f"action={action.value}",
            f"ip={self.device.address}",
            f"ipport={self.port}",
            f"power_timeout={self.device.power_timeout}",
        ]
        if self.device.username:
            lines.append(f"username={self.device.username}")
        lines += [f"{key}={value}" for key, value in sorted(self.device.options.items())]
        secret_lines, env = self._credentials(action, secret)
        return ("\n".join(lines + secret_lines) + "\n").encode(), env

    def _read_secret(self, action: PowerAction) -> Secret | None:
        if self.device.password is None:
            return None
        try:
            return self.device.password.read()
        except SecretError as err:
            raise failure(ErrorKind.CONFIG, self.name, action, 0.0, str(err)) from None

    async def _run(self, action: PowerAction) -> PowerResult:
        program = self.program_path or shutil.which(self.program, path=os.environ.get("PATH", "") + ":/usr/sbin")
        if program is None or not os.access(program, os.X_OK):
            raise failure(
                ErrorKind.AGENT_MISSING, self.name, action, 0.0,
                f"{self.program} is not installed (Debian package fence-agents)",
            )
        secret = self._read_secret(action)
        stdin, extra_env = self._stdin(action, secret)
        env = {**os.environ, "LANG": "C", "LC_ALL": "C", **extra_env}
        outcome = await run_program([program], stdin=stdin, timeout=self.device.timeout, env=env)
        return await self._result(action, outcome, secret)

    async def _result(self, action: PowerAction, outcome: ProgramOutcome, secret: Secret | None) -> PowerResult:
        said = redact(_last_line(outcome.stdout), secret)
        if outcome.timed_out:
            raise failure(
                ErrorKind.TIMEOUT, self.name, action, outcome.duration_s,
                f"{self.program} gave no answer within {self.device.timeout:.0f} s and was killed",
            )
        code = outcome.returncode
        if action is PowerAction.STATUS and code in (EXIT_OK, EXIT_STATUS_OFF):
            state = PowerState.ON if code == EXIT_OK else PowerState.OFF
            return PowerResult(self.name, action, True, state, outcome.duration_s, said)
        if action is not PowerAction.STATUS and code == EXIT_OK:
            state = PowerState.OFF if action is PowerAction.OFF else PowerState.ON
            return PowerResult(self.name, action, True, state, outcome.duration_s, said)
        started = time.monotonic()
        kind = await self._classify(action, secret)
        detail = redact(_last_line(outcome.stderr) or said, secret)
        raise failure(
            kind, self.name, action, outcome.duration_s + (time.monotonic() - started),
            f"{_EXPLAIN[kind].format(agent=self, port=self.port)} ({self.program} exit {code}: {detail})",
        )


_EXPLAIN = {
    ErrorKind.UNREACHABLE: "no answer from {agent.device.address} port {port}",
    ErrorKind.AUTH_FAILED: "{agent.device.address} answers but refused the login "
    "(user, password, privilege level or cipher)",
    ErrorKind.FAILED: "the device accepted the login but the action failed",
}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class IpmiLanAgent(FenceProgramAgent):
    """IPMI over LAN through ``fence_ipmilan`` (``lanplus``, ``cipher``, ``privlvl``... in options)."""

    name = AgentName("ipmilan")
    program = "fence_ipmilan"
    default_port = 623
    allowed_options = frozenset(
        {"lanplus", "cipher", "privlvl", "auth", "method", "target", "power_wait", "ipmitool_timeout", "retry_on"}
    )

    def _credentials(self, action: PowerAction, secret: Secret | None) -> tuple[list[str], dict[str, str]]:
        if self.device.password is None:
            return [], {}
        if not os.access(IPMITOOL_SHIM, os.X_OK):
            raise failure(ErrorKind.CONFIG, self.name, action, 0.0, f"{IPMITOOL_SHIM} is missing or not executable")
        try:
            path = self.device.password.path_checked()
        except SecretError as err:
            raise failure(ErrorKind.CONFIG, self.name, action, 0.0, str(err)) from None
        return [f"ipmitool_path={IPMITOOL_SHIM}"], {"VIRTPLANE_IPMI_PASSWORD_FILE": str(path)}

    async def _classify(self, action: PowerAction, secret: Secret | None) -> ErrorKind:
        if not await rmcp_ping(self.device.address, self.port):
            return ErrorKind.UNREACHABLE
        if action is PowerAction.STATUS:
            return ErrorKind.AUTH_FAILED
        try:
            await self.status()
        except PowerError:
            return ErrorKind.AUTH_FAILED
        return ErrorKind.FAILED


class RedfishAgent(FenceProgramAgent):
    """Redfish (HTTPS) through ``fence_redfish`` (``ssl_insecure``, ``systems_uri``... in options)."""

    name = AgentName("redfish")
    program = "fence_redfish"
    default_port = 443
    allowed_options = frozenset({"ssl_insecure", "systems_uri", "redfish_uri", "power_wait"})

    async def _classify(self, action: PowerAction, secret: Secret | None) -> ErrorKind:
        if not await tcp_answers(self.device.address, self.port):
            return ErrorKind.UNREACHABLE
        insecure = self.device.options.get("ssl_insecure", "").lower() in ("1", "true", "yes", "on")
        status = await redfish_login_status(
            self.device.address, self.port, self.device.username or "", secret, verify_tls=not insecure
        )
        if status is None:
            return ErrorKind.UNREACHABLE
        if status in (401, 403):
            return ErrorKind.AUTH_FAILED
        return ErrorKind.FAILED
