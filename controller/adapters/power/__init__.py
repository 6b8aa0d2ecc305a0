"""Power management (fence) agents: power a host off/on and tell its power state.

```python
agent = agent_for("lab-1", host.spec.powerManagement, PowerContext(lab_dir=...))
result = await agent.status()          # PowerResult(agent, action, ok, state, duration_s, message)
report = await fence(agent)            # status -> off -> status until off; every attempt recorded
```

Agents (:mod:`.lab`, :mod:`.fence_agents` for ``ipmilan``/``redfish``, :mod:`.ssh`) implement
:class:`PowerAgent`; failures raise the typed tree of :mod:`.model`. Passwords are references
(:mod:`.secrets`), read at call time, never on a command line, in a message or in a log.
"""

from controller.adapters.power.agent import PowerAgent
from controller.adapters.power.factory import AGENTS, PowerContext, agent_for
from controller.adapters.power.fence import FenceReport, fence
from controller.adapters.power.fence_agents import FenceDevice, IpmiLanAgent, RedfishAgent
from controller.adapters.power.lab import LabAgent
from controller.adapters.power.model import (
    AgentAuthFailed,
    AgentFailed,
    AgentMissing,
    AgentName,
    AgentTimeout,
    AgentUnreachable,
    ErrorKind,
    PowerAction,
    PowerConfigError,
    PowerError,
    PowerResult,
    PowerState,
)
from controller.adapters.power.ssh import SshAgent, SshTarget
from controller.adapters.secrets import Secret, SecretError, SecretRef

__all__ = [
    "AGENTS",
    "AgentAuthFailed",
    "AgentFailed",
    "AgentMissing",
    "AgentName",
    "AgentTimeout",
    "AgentUnreachable",
    "ErrorKind",
    "FenceDevice",
    "FenceReport",
    "IpmiLanAgent",
    "LabAgent",
    "PowerAction",
    "PowerAgent",
    "PowerConfigError",
    "PowerContext",
    "PowerError",
    "PowerResult",
    "PowerState",
    "RedfishAgent",
    "Secret",
    "SecretError",
    "SecretRef",
    "SshAgent",
    "SshTarget",
    "agent_for",
    "fence",
]
