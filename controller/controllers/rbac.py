"""Role and RoleBinding controllers: status only. The API server enforces these objects itself
(``controller/api/rbac.py`` reads them on every request); here a binding reports whether its role exists,
so that a typo in ``spec.role`` shows in ``virtplane get rolebindings`` instead of silently granting nothing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.runtime.cache import Cache
from controller.runtime.context import Runtime
from controller.runtime.registry import GLOBAL, Controller, Watch
from controller.runtime.workqueue import Result
from reconcilers.conditions import cond
from specs.meta import Resource
from specs.rbac import BUILTIN_ROLES, Role, RoleBinding, RoleBindingStatus, RoleStatus


async def reconcile_role(rt: Runtime, name: str) -> Result | None:
    role = rt.cache.get("Role", name, Role)
    if role is None:
        return None
    rules = len(role.spec.rules)
    status = RoleStatus(
        observedGeneration=role.metadata.generation,
        phase="Ready",
        conditions=rt.with_times(
            (cond("Ready", True, "Ready", f"{rules} rule(s)"),), rt.cache.status["Role"].get(name)
        ),
    )
    await rt.write_status("Role", name, status)
    return None


async def reconcile_binding(rt: Runtime, name: str) -> Result | None:
    binding = rt.cache.get("RoleBinding", name, RoleBinding)
    if binding is None:
        return None
    role = binding.spec.role
    found = role in BUILTIN_ROLES or rt.cache.get("Role", role, Role) is not None
    where = ", ".join(binding.spec.clusters) or "every cluster"
    message = f"role {role} in {where}" if found else f"role {role!r} does not exist: this binding grants nothing"
    status = RoleBindingStatus(
        observedGeneration=binding.metadata.generation,
        phase="Bound" if found else "RoleMissing",
        conditions=rt.with_times(
            (cond("Ready", found, "Bound" if found else "RoleMissing", message),),
            rt.cache.status["RoleBinding"].get(name),
        ),
    )
    await rt.write_status("RoleBinding", name, status)
    return None


def _bindings_of_role(rt: Runtime, role: str, before: Any, after: Any) -> Iterable[str]:
    return [b.metadata.name for b in rt.cache.all("RoleBinding", RoleBinding) if b.spec.role == role]


def global_scope(cache: Cache, obj: Resource) -> str:
    return GLOBAL


ROLE_CONTROLLER = Controller(kind="Role", reconcile=reconcile_role, scope=global_scope)
BINDING_CONTROLLER = Controller(
    kind="RoleBinding",
    reconcile=reconcile_binding,
    scope=global_scope,
    watches=(Watch("Role", "spec", _bindings_of_role),),
)
