"""From a Host's ``spec.powerManagement`` to a :class:`PowerAgent`: the one place agents are registered.

Server-side settings that are not in the spec (where secrets and ssh keys may live, the lab
directory) come in a :class:`PowerContext` chosen by the operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.adapters.power.agent import PowerAgent
from controller.adapters.power.fence_agents import FenceDevice, IpmiLanAgent, RedfishAgent
from controller.adapters.power.lab import LabAgent
from controller.adapters.power.ssh import DEFAULT_SSH_KEY_DIR, SshAgent, SshTarget
from controller.adapters.secrets import DEFAULT_SECRETS_DIR, SecretRef
from specs.host import PowerManagement

AGENTS = ("lab", "ipmilan", "redfish", "ssh")


@dataclass(frozen=True)
class PowerContext:
    secrets_dir: Path = DEFAULT_SECRETS_DIR
    ssh_key_dir: Path = DEFAULT_SSH_KEY_DIR
    ssh_known_hosts: Path = DEFAULT_SSH_KEY_DIR / "known_hosts"
    lab_dir: Path | None = None
    qemu_caps_dir: Path | None = None
    timeout: float = 60.0


def agent_for(host: str, spec: PowerManagement, ctx: PowerContext) -> PowerAgent | None:
    """The agent of ``host``; None for ``agent: none``. ``ValueError`` for options an agent does not know."""
    if spec.agent == "none":
        return None
    if spec.agent == "lab":
        if ctx.lab_dir is None:
            raise ValueError(f"host {host}: agent lab needs the lab directory in the server's power settings")
        return LabAgent(ctx.lab_dir, host, qemu_caps_dir=ctx.qemu_caps_dir, timeout=ctx.timeout)
    assert spec.address is not None  # the spec's validator requires it for these agents
    password = SecretRef(spec.passwordSecret, ctx.secrets_dir) if spec.passwordSecret else None
    if spec.agent in ("ipmilan", "redfish"):
        device = FenceDevice(spec.address, spec.username, password, spec.port, dict(spec.options), ctx.timeout)
        return IpmiLanAgent(device) if spec.agent == "ipmilan" else RedfishAgent(device)
    options = dict(spec.options)
    key = options.pop("key", "id_ed25519")
    if options:
        raise ValueError(f"host {host}: agent ssh takes only the option 'key' (a file in {ctx.ssh_key_dir})")
    return SshAgent(
        SshTarget(spec.address, ctx.ssh_key_dir / key, ctx.ssh_known_hosts, user=spec.username or "root",
                  port=spec.port or 22, key_dir=ctx.ssh_key_dir, timeout=ctx.timeout)
    )
