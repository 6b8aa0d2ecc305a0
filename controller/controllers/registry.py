"""The controllers of virtplane, registered with the runtime. Adding a kind: its module in this package
(reconcile, scope, watches, diff planner, action handlers, ``CONTROLLER``) and one line here."""

from __future__ import annotations

from controller.controllers import (
    cluster,
    disk,
    gluster,
    host,
    migration,
    network,
    pool,
    rbac,
    snapshot,
    storage,
    vm,
)
from controller.runtime.registry import Registry


def default_registry() -> Registry:
    return Registry([
        cluster.CONTROLLER,
        host.CONTROLLER,
        storage.CONTROLLER,
        gluster.CONTROLLER,
        network.CONTROLLER,
        disk.CONTROLLER,
        vm.CONTROLLER,
        pool.CONTROLLER,
        snapshot.CONTROLLER,
        migration.CONTROLLER,
        rbac.ROLE_CONTROLLER,
        rbac.BINDING_CONTROLLER,
    ])
