"""The ``ssh`` agent: power a host off by running ``poweroff -f`` on it over ssh.

It cannot fence a hung host (nothing answers), and it cannot power one on. ``status`` is whether the
host's sshd lets us run ``true``: ON when it does; OFF when nothing accepts a TCP connection on the ssh
port (the host is down *as far as ssh can tell*; a fence built on this is weaker than a BMC's);
AuthFailed when the port answers but ssh fails (key refused, host key unknown or changed).

ssh runs with ``BatchMode=yes`` (never prompts), ``StrictHostKeyChecking=yes`` against a known_hosts
file we are given, ``IdentitiesOnly=yes`` with one private key that must lie in an allowed directory
(default ``/etc/virtplane/ssh``) and be readable by its owner only. ssh exits 255 for its own errors,
else with the remote command's status; ``poweroff -f`` usually cuts the connection (255 after a
successful TCP connect is then success if the host stops answering: ``off`` checks that).
"""

from __future__ import annotations

import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from controller.adapters.power._probe import tcp_answers
from controller.adapters.power._process import ProgramOutcome, run_program
from controller.adapters.power.agent import PowerAgent
from controller.adapters.power.model import AgentName, ErrorKind, PowerAction, PowerResult, PowerState, failure

DEFAULT_SSH_KEY_DIR = Path("/etc/virtplane/ssh")
SSH_ERROR = 255


@dataclass(frozen=True)
class SshTarget:
    address: str
    key: Path
    known_hosts: Path
    user: str = "root"
    port: int = 22
    key_dir: Path = DEFAULT_SSH_KEY_DIR
    poweroff_command: Sequence[str] = ("poweroff", "-f")
    connect_timeout: int = 5
    timeout: float = 30.0
    off_deadline: float = 60.0
    """How long ``off`` waits for the host to stop answering after the command."""
    extra_options: Sequence[str] = field(default_factory=tuple)
    """More ``-o Key=Value`` ssh options (e.g. ``UserKnownHostsFile`` is already set)."""


class SshAgent(PowerAgent):
    name = AgentName("ssh")

    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def _key(self, action: PowerAction) -> Path:
        key = self.target.key.resolve()
        base = self.target.key_dir.resolve()
        if base not in key.parents:
            raise failure(ErrorKind.CONFIG, self.name, action, 0.0, f"ssh key {self.target.key} is not under {base}")
        try:
            mode = key.stat().st_mode
        except FileNotFoundError:
            raise failure(ErrorKind.CONFIG, self.name, action, 0.0, f"no ssh key {key}") from None
        if mode & 0o077:
            raise failure(ErrorKind.CONFIG, self.name, action, 0.0,
                          f"ssh key {key} is accessible by group or others (mode {stat.S_IMODE(mode):04o})")
        return key

    def _argv(self, action: PowerAction, command: Sequence[str]) -> list[str]:
        ssh = shutil.which("ssh")
        if ssh is None:
            raise failure(ErrorKind.AGENT_MISSING, self.name, action, 0.0, "ssh is not installed (openssh-client)")
        t = self.target
        options = [
            "BatchMode=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={t.known_hosts}",
            "IdentitiesOnly=yes", f"ConnectTimeout={t.connect_timeout}", "ServerAliveInterval=2",
            "ServerAliveCountMax=2", "LogLevel=ERROR", *t.extra_options,
        ]
        argv = [ssh, "-F", "/dev/null", "-i", str(self._key(action)), "-p", str(t.port), "-l", t.user]
        for option in options:
            argv += ["-o", option]
        return [*argv, "--", t.address, *command]

    async def _ssh(self, action: PowerAction, command: Sequence[str]) -> ProgramOutcome:
        return await run_program(self._argv(action, command), stdin=b"", timeout=self.target.timeout)

    async def _answers(self) -> bool:
        return await tcp_answers(self.target.address, self.target.port, timeout=self.target.connect_timeout)

    async def status(self) -> PowerResult:
        started = time.monotonic()
        if not await self._answers():
            return PowerResult(self.name, PowerAction.STATUS, True, PowerState.OFF, time.monotonic() - started,
                               f"nothing answers on {self.target.address} port {self.target.port}")
        outcome = await self._ssh(PowerAction.STATUS, ("true",))
        took = time.monotonic() - started
        if outcome.returncode == 0:
            return PowerResult(self.name, PowerAction.STATUS, True, PowerState.ON, took, "ssh answers")
        raise self._failure(PowerAction.STATUS, outcome, took)

    async def off(self) -> PowerResult:
        started = time.monotonic()
        if not await self._answers():
            raise failure(ErrorKind.UNREACHABLE, self.name, PowerAction.OFF, time.monotonic() - started,
                          f"nothing answers on {self.target.address} port {self.target.port}")
        # Log in once first: a refused key fails here at once instead of after off_deadline.
        probe = await self._ssh(PowerAction.OFF, ("true",))
        if probe.returncode != 0:
            raise self._failure(PowerAction.OFF, probe, time.monotonic() - started)
        outcome = await self._ssh(PowerAction.OFF, tuple(self.target.poweroff_command))
        if outcome.returncode not in (0, SSH_ERROR):
            raise self._failure(PowerAction.OFF, outcome, time.monotonic() - started)
        # Success or a cut connection: it worked only if the host stops answering.
        with anyio.move_on_after(self.target.off_deadline):
            while await self._answers():
                await anyio.sleep(0.5)
            return PowerResult(self.name, PowerAction.OFF, True, PowerState.OFF, time.monotonic() - started,
                               f"{' '.join(self.target.poweroff_command)} ran; ssh no longer answers")
        raise self._failure(PowerAction.OFF, outcome, time.monotonic() - started, kind=ErrorKind.TIMEOUT)

    async def on(self) -> PowerResult:
        raise failure(ErrorKind.CONFIG, self.name, PowerAction.ON, 0.0, "the ssh agent cannot power a host on")

    def _failure(self, action: PowerAction, outcome: ProgramOutcome, took: float,
                 kind: ErrorKind | None = None) -> Exception:
        detail = outcome.stderr.strip().splitlines()[-1:] or [""]
        if kind is ErrorKind.TIMEOUT:
            return failure(kind, self.name, action, took,
                           f"the host still answers ssh {self.target.off_deadline:.0f} s after the power-off command")
        if outcome.timed_out:
            return failure(ErrorKind.TIMEOUT, self.name, action, took, f"ssh gave no answer in {self.target.timeout} s")
        if kind is None:
            kind = ErrorKind.AUTH_FAILED if outcome.returncode == SSH_ERROR else ErrorKind.FAILED
        return failure(kind, self.name, action, took, f"ssh exit {outcome.returncode}: {detail[0]}")
