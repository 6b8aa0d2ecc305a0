"""The controller registry: what each controller declares, in one place (controller-runtime's
For / Owns / Watches, plus what virtplane adds).

A controller is a ``Controller`` value::

    Controller(
        kind="Disk",                      # For: the kind it reconciles (one controller per kind)
        reconcile=reconcile_disk,         # async (Runtime, name) -> Result | None
        scope=disk_scope,                 # the cluster whose leader reconciles an object; GLOBAL if none
        finalizer="virtplane.io/volume",  # put on new objects by the API; removed by the controller
        watches=(Watch("StorageDomain", "status", disks_on_domain), ...),   # related kinds -> keys
        plan=preview_disk,                # the diff planner: what `virtplane diff` shows for a change
        handlers={CreateVolume: ..., ...},  # how the one executor runs the actions it plans
        on_domain_event=...,              # libvirt lifecycle events -> keys (VirtualMachine only)
        start=...,                        # warm in-memory state from the cache at start (optional)
    )

The manager, the API's dry-run planning, ``diff``, the executor and the default finalizers all read the
registry; nothing else lists kinds by hand. ``controller.controllers.registry.default_registry()`` builds it
from the controller modules: adding a kind is one module there plus one line of registration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from reconcilers.plan import Action, Plan
from specs.kinds import KINDS
from specs.meta import Resource

if TYPE_CHECKING:
    from controller.adapters.libvirt.observe import DomainEvent
    from controller.runtime.cache import Cache
    from controller.runtime.context import Runtime
    from controller.runtime.workqueue import Result
    from controller.store import Change

# The leader scope of objects that belong to no cluster (a Snapshot of a VM that is gone, a LUN Disk
# without a storage domain). Not a valid cluster name, so it never collides with one.
GLOBAL = "@global"

# What changed: a spec or a status in the store, or (for Hosts) whether this replica reaches the host.
Part = Literal["spec", "status", "ready"]
Reconcile = Callable[["Runtime", str], Awaitable["Result | None"]]
Scope = Callable[["Cache", Resource], str]
# A related object changed: (runtime, its name, value before, value after) -> names of objects of the
# watching controller's kind to reconcile. ``before``/``after`` are the spec (Resource), the status, or
# for "ready" the host's readiness (bool).
Mapper = Callable[["Runtime", str, Any, Any], Iterable[str]]
Handler = Callable[[Any, "Runtime"], Awaitable[Any]]  # (action, runtime) -> a value for its controller
DomainEventMapper = Callable[["Runtime", "DomainEvent"], Iterable[str]]


@dataclass(frozen=True)
class Preview:
    """What ``diff`` shows for one object: the plan the controller would execute now, and, when that plan
    moves a VM, the plan that follows once it has moved (``then``). ``note`` explains an empty plan that
    is not "nothing to do" (e.g. waiting for a dependency)."""

    plan: Plan
    then: Plan | None = None
    note: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """``{"plan": [action, ...], "note": text}``; actions that follow a move carry ``"after": "move"``."""
        steps = self.plan.to_wire()
        if self.then:
            steps += [{**step, "after": "move"} for step in self.then.to_wire()]
        body: dict[str, Any] = {"plan": steps}
        if self.note:
            body["note"] = self.note
        return body


DiffPlanner = Callable[["Runtime", "Change"], Awaitable[Preview]]


@dataclass(frozen=True)
class Watch:
    """Reconcile objects of the watching kind when ``part`` of a ``kind`` object changes."""

    kind: str
    part: Part
    map: Mapper


@dataclass(frozen=True)
class Controller:
    kind: str
    reconcile: Reconcile
    scope: Scope
    finalizer: str | None = None
    watches: tuple[Watch, ...] = ()
    plan: DiffPlanner | None = None
    handlers: Mapping[type[Action], Handler] = field(default_factory=dict)
    on_domain_event: DomainEventMapper | None = None
    start: Callable[[Runtime], None] | None = None
    # The periodic resync skips an object for which this says True (nothing to do, judged from the caches).
    in_sync: Callable[[Runtime, str], bool] | None = None


class RegistryError(ValueError):
    """The controllers do not fit together (a kind twice, an action with two handlers, an unknown kind)."""


class Registry:
    """The controllers of one process, checked once when built."""

    def __init__(self, controllers: Sequence[Controller]) -> None:
        self.controllers: dict[str, Controller] = {}
        self.handlers: dict[type[Action], Handler] = {}
        self._watchers: dict[tuple[str, Part], list[tuple[str, Watch]]] = {}
        for c in controllers:
            if c.kind not in KINDS:
                raise RegistryError(f"controller for unknown kind {c.kind!r}")
            if c.kind in self.controllers:
                raise RegistryError(f"two controllers for {c.kind}")
            self.controllers[c.kind] = c
            for action, handler in c.handlers.items():
                if action in self.handlers:
                    raise RegistryError(f"{action.__name__} has two handlers ({c.kind} and another controller)")
                self.handlers[action] = handler
            for w in c.watches:
                if w.kind not in KINDS:
                    raise RegistryError(f"{c.kind} watches unknown kind {w.kind!r}")
                self._watchers.setdefault((w.kind, w.part), []).append((c.kind, w))

    def __contains__(self, kind: object) -> bool:
        return kind in self.controllers

    def __iter__(self) -> Iterator[Controller]:
        return iter(self.controllers.values())

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.controllers)

    def get(self, kind: str) -> Controller | None:
        return self.controllers.get(kind)

    def watchers(self, kind: str, part: Part) -> Sequence[tuple[str, Watch]]:
        """(watching kind, watch) for every controller interested in ``part`` of ``kind``."""
        return self._watchers.get((kind, part), ())

    def finalizers(self) -> dict[str, tuple[str, ...]]:
        """The finalizer each kind's new objects get (the API sets them at create: one write, not two)."""
        return {c.kind: (c.finalizer,) for c in self.controllers.values() if c.finalizer}
