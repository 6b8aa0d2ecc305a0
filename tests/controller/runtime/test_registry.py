"""The controller registry: every kind has a controller, every action a handler, and wiring mistakes are refused.

Kinds come from ``specs.kinds`` and actions from the modules of ``reconcilers/``: no list here is written by hand.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import reconcilers
from controller.controllers.registry import default_registry
from controller.runtime.registry import Controller, Registry, RegistryError, Watch
from reconcilers.plan import Action, HostAction
from reconcilers.vm.actions import StartDomain
from specs.kinds import KINDS


def all_actions() -> set[type[Action]]:
    found: set[type[Action]] = set()
    for info in pkgutil.walk_packages(reconcilers.__path__, "reconcilers."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Action) and obj not in (Action, HostAction):
                found.add(obj)
    return found


async def _noop(rt: object, name: str) -> None:
    return None


async def _handler(action: object, rt: object) -> None:
    return None


def test_every_kind_has_exactly_one_controller() -> None:
    registry = default_registry()
    assert sorted(registry.kinds) == sorted(KINDS)


def test_every_action_a_planner_can_emit_has_a_handler() -> None:
    actions = all_actions()
    assert len(actions) >= 20  # the scan finds them
    missing = sorted(a.__name__ for a in actions if a not in default_registry().handlers)
    assert not missing, f"actions without a handler in the executor: {missing}"


def test_host_bound_actions_carry_their_host() -> None:
    action = StartDomain("h1", "web")  # type: ignore[arg-type]
    assert isinstance(action, HostAction) and action.host == "h1"


def test_finalizers_come_from_the_controllers() -> None:
    finalizers = default_registry().finalizers()
    assert finalizers["VirtualMachine"] == ("virtplane.io/domain",)
    assert finalizers["Disk"] == ("virtplane.io/volume",)
    assert "Cluster" not in finalizers


def test_wiring_mistakes_are_refused() -> None:
    scope = lambda cache, obj: "c"  # noqa: E731
    with pytest.raises(RegistryError, match="two controllers"):
        Registry([Controller("Host", _noop, scope), Controller("Host", _noop, scope)])
    with pytest.raises(RegistryError, match="two handlers"):
        Registry([Controller("Host", _noop, scope, handlers={StartDomain: _handler}),
                  Controller("Disk", _noop, scope, handlers={StartDomain: _handler})])
    with pytest.raises(RegistryError, match="unknown kind"):
        Registry([Controller("FenceAgent", _noop, scope)])
    with pytest.raises(RegistryError, match="watches unknown kind"):
        Registry([Controller("Host", _noop, scope, watches=(Watch("Nope", "spec", lambda *a: ()),))])


def test_watchers_are_found_by_kind_and_part() -> None:
    registry = default_registry()
    on_disk_status = {kind for kind, _ in registry.watchers("Disk", "status")}
    assert on_disk_status == {"VirtualMachine", "Disk"}  # VMs using it; clones waiting for it
    assert {kind for kind, _ in registry.watchers("Host", "ready")} == {"Cluster", "StorageDomain", "Network",
                                                                         "VirtualMachine", "Snapshot", "Disk"}
