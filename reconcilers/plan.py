"""Plans are plain data: a frozen tuple of actions, each with an impact and a human reason.

The planner (this package) decides; the executor (``controller/``) runs the actions in order and stops at
the first failure; ``virtplane diff`` prints the very same objects. The reason is for humans only and never
steers execution. After execution, a fresh plan for the same inputs must be empty — anything else is an
``InconsistentResult`` (a bug, reported loudly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from reconcilers.domain import HostName


class Impact(StrEnum):
    """What an action does to a running guest, from harmless to harmful."""

    NONE = "none"  # no running guest is affected (define, create a volume, ...)
    LIVE = "live"  # applied to the running guest without interruption
    NEXT_BOOT = "next-boot"  # persistent config only; takes effect at the next boot
    RESTART = "restart"  # the guest is shut down and started again
    MIGRATION = "migration"  # the guest moves to another host
    DESTRUCTIVE = "destructive"  # data or a guest goes away


_RANK = {i: n for n, i in enumerate(Impact)}


@dataclass(frozen=True)
class Action:
    """Base of every action. Subclasses are named verb+noun and set ``impact``."""

    reason: str = dataclasses.field(kw_only=True, default="")
    IMPACT: ClassVar[Impact] = Impact.NONE

    @property
    def impact(self) -> Impact:
        return self.IMPACT

    @property
    def name(self) -> str:
        return type(self).__name__

    def target(self) -> str:
        """A short human description of what the action touches."""
        return ""

    def to_wire(self) -> dict[str, Any]:
        return {"action": self.name, "impact": str(self.impact), "target": self.target(), "reason": self.reason}


@dataclass(frozen=True)
class HostAction(Action):
    """An action carried out on one libvirt host. The executor needs that host to be connected and Ready."""

    host: HostName


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = ()

    @classmethod
    def of(cls, *actions: Action) -> Plan:
        return cls(tuple(actions))

    def __iter__(self) -> Iterator[Action]:
        return iter(self.actions)

    def __len__(self) -> int:
        return len(self.actions)

    def __bool__(self) -> bool:
        return bool(self.actions)

    def __add__(self, other: Plan | Iterable[Action]) -> Plan:
        return Plan(self.actions + tuple(other))

    @property
    def impact(self) -> Impact:
        """The most harmful impact in the plan."""
        return max((a.impact for a in self.actions), key=_RANK.__getitem__, default=Impact.NONE)

    def to_wire(self) -> list[dict[str, Any]]:
        return [a.to_wire() for a in self.actions]

    def hosts(self) -> frozenset[HostName]:
        """The hosts the plan acts on."""
        return frozenset(a.host for a in self.actions if isinstance(a, HostAction))


class InconsistentResult(Exception):
    """A plan was executed, and re-planning from fresh observation was not empty: a bug."""

    def __init__(self, key: str, leftover: Plan) -> None:
        names = ", ".join(f"{a.name}({a.target()})" for a in leftover)
        super().__init__(f"inconsistent result after executing the plan for {key}: still planned {names}")
        self.key = key
        self.leftover = leftover
