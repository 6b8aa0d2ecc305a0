"""The one executor: runs a Plan's actions in order, stops at the first failure.

It never decides anything: after it returns (done or failed), the key is observed and planned again.
Each action type has exactly one handler, registered by the controller that owns its family (domain
actions by the VirtualMachine controller, volumes by the Disk controller, ...; see
``controller.runtime.registry``). A handler gets the action and the ``Runtime``, does the I/O and may return
a value for its controller (``ExecutionResult.outcomes``); errors are the reconcile error tree
(``controller.common.errors``), classified once in each adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from controller.common.errors import ReconcileError
from reconcilers.plan import Action, Plan

if TYPE_CHECKING:
    from controller.runtime.context import Runtime
    from controller.runtime.registry import Handler

log = logging.getLogger("virtplane.executor")


@dataclass(frozen=True)
class Outcome:
    """One executed action: how long it took and what its handler returned (most return None)."""

    action: Action
    seconds: float
    value: Any = None


@dataclass
class ExecutionResult:
    done: list[Action] = field(default_factory=list)
    failed: Action | None = None
    error: ReconcileError | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def describe_done(self) -> str:
        return ", ".join(f"{a.name} {a.target()}" for a in self.done)


class NoHandler(TypeError):
    """An action reached the executor that no registered controller handles: a wiring bug."""


class Executor:
    def __init__(self, handlers: Mapping[type[Action], Handler]) -> None:
        self.handlers = dict(handlers)

    async def execute(
        self, plan: Plan, rt: Runtime, *, on_action: Callable[[Action, float], None] | None = None
    ) -> ExecutionResult:
        result = ExecutionResult()
        for action in plan:
            handler = self.handlers.get(type(action))
            if handler is None:
                raise NoHandler(f"the executor has no handler for {action.name}")
            started = time.perf_counter()
            try:
                value = await handler(action, rt)
            except ReconcileError as e:
                result.failed, result.error = action, e
                log.info("action %s %s failed: %s", action.name, action.target(), e)
                return result
            seconds = time.perf_counter() - started
            result.done.append(action)
            result.outcomes.append(Outcome(action, seconds, value))
            if on_action is not None:
                on_action(action, seconds)
        return result
