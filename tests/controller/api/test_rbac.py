"""Authorization by roles: the index answers per verb, kind and cluster, and follows the store."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from controller.api.auth import Identity
from controller.api.rbac import RbacIndex, batch_lookup, forbidden_changes, object_cluster
from controller.store import Store
from specs.kinds import parse_resource
from specs.meta import Resource
from specs.rbac import Role, RoleBinding


def binding(name: str, role: str, subjects: list[tuple[str, str]], clusters: tuple[str, ...] = ()) -> RoleBinding:
    obj = parse_resource({"kind": "RoleBinding", "metadata": {"name": name}, "spec": {
        "role": role, "subjects": [{"kind": k, "name": n} for k, n in subjects], "clusters": list(clusters)}})
    assert isinstance(obj, RoleBinding)
    return obj


def role(name: str, rules: list[dict[str, Any]]) -> Role:
    obj = parse_resource({"kind": "Role", "metadata": {"name": name}, "spec": {"rules": rules}})
    assert isinstance(obj, Role)
    return obj


def res(kind: str, name: str, spec: dict[str, Any]) -> Resource:
    return parse_resource({"kind": kind, "metadata": {"name": name}, "spec": spec})


BOB = Identity("bob", frozenset({"virtplane-operators", "virtplane-viewers"}), "session:x")
CAROL = Identity("carol", frozenset({"virtplane-viewers"}), "session:y")
CI = Identity("serviceaccount:ci", frozenset({"virtplane:serviceaccounts"}), "token:z")
ADMIN = Identity("admin", frozenset({"virtplane:admins"}))


def index_of(*objs: Role | RoleBinding) -> RbacIndex:
    index = RbacIndex()
    for obj in objs:
        if isinstance(obj, Role):
            index.put_role(obj)
        else:
            index.put_binding(obj)
    return index


@pytest.mark.parametrize(("who", "verb", "kind", "cluster", "allowed"), [
    (BOB, "create", "VirtualMachine", "prod", True),
    (BOB, "delete", "Disk", "prod", True),
    (BOB, "create", "VirtualMachine", "dev", False),  # operator in prod only
    (BOB, "create", "VirtualMachine", None, False),  # a global write needs a global binding
    (BOB, "create", "Host", "prod", False),  # operators do not touch hosts
    (BOB, "get", "Host", "dev", True),  # viewer everywhere
    (BOB, "list", "AuditRecord", None, False),  # only admins read the audit log
    (CAROL, "list", "VirtualMachine", None, True),
    (CAROL, "update", "VirtualMachine", "prod", False),
    (CAROL, "list", "ApiToken", None, False),
    (CI, "update", "VirtualMachine", "prod", True),  # custom role, bound to the service account
    (CI, "delete", "VirtualMachine", "prod", False),
    (ADMIN, "delete", "AuditRecord", None, True),
])
def test_allowed_per_verb_kind_and_cluster(who: Identity, verb: str, kind: str, cluster: str | None,
                                           allowed: bool) -> None:
    index = index_of(
        binding("ops", "operator", [("Group", "virtplane-operators")], ("prod",)),
        binding("view", "viewer", [("Group", "virtplane-viewers")]),
        role("vm-updater", [{"kinds": ["VirtualMachine"], "verbs": ["get", "update"]}]),
        binding("ci", "vm-updater", [("ServiceAccount", "ci")]),
    )
    assert index.allowed(who, verb, kind, cluster) is allowed


def test_a_binding_to_a_missing_role_grants_nothing_until_the_role_exists() -> None:
    index = index_of(binding("ci", "vm-updater", [("ServiceAccount", "ci")]))
    assert not index.allowed(CI, "update", "VirtualMachine", "prod")
    index.put_role(role("vm-updater", [{"kinds": ["VirtualMachine"], "verbs": ["*"]}]))
    assert index.allowed(CI, "update", "VirtualMachine", "prod")
    index.drop_binding("ci")
    assert not index.allowed(CI, "update", "VirtualMachine", "prod")


def test_clusters_allowed_for_lists() -> None:
    index = index_of(binding("a", "operator", [("User", "bob")], ("prod",)),
                     binding("b", "operator", [("Group", "sre")], ("dev",)))
    bob = Identity("bob", frozenset({"sre"}))
    assert index.clusters_allowed(bob, "list", "VirtualMachine") == {"prod", "dev"}
    assert index.clusters_allowed(CAROL, "list", "VirtualMachine") == frozenset()
    assert index.clusters_allowed(ADMIN, "list", "VirtualMachine") is None


def test_builtin_role_names_are_reserved_and_kinds_checked() -> None:
    with pytest.raises(ValueError, match="built in"):
        role("admin", [{"kinds": ["*"], "verbs": ["*"]}])
    with pytest.raises(ValueError, match="unknown kind 'VM'"):
        role("x", [{"kinds": ["VM"], "verbs": ["get"]}])


@pytest.mark.anyio
async def test_cluster_from_the_body_follows_one_reference(store: Store) -> None:
    domain = res("StorageDomain", "fast", {"cluster": "prod", "type": "posix", "posix": {"path": "/srv/vp"}})
    web = res("VirtualMachine", "web", {"cluster": "prod", "cpu": {"cores": 1}, "memory": {"size": "1Gi"}})
    disk = res("Disk", "web-root", {"storageDomain": "fast", "size": "1Gi"})
    snap = res("Snapshot", "web-s1", {"vm": "web"})
    lookup = batch_lookup([domain, web], store)
    assert await object_cluster(disk, lookup) == "prod"
    assert await object_cluster(snap, lookup) == "prod"
    assert await object_cluster(res("Cluster", "dev", {}), lookup) == "dev"
    assert await object_cluster(snap, batch_lookup([], store)) is None  # VM not stored: global rights needed


@pytest.mark.anyio
async def test_forbidden_changes_name_each_object(store: Store) -> None:
    index = index_of(binding("ops", "operator", [("User", "bob")], ("prod",)))
    prod = res("VirtualMachine", "a", {"cluster": "prod", "cpu": {"cores": 1}, "memory": {"size": "1Gi"}})
    dev = res("VirtualMachine", "b", {"cluster": "dev", "cpu": {"cores": 1}, "memory": {"size": "1Gi"}})
    result = await store.apply([prod, dev], correlation_id="c1", dry_run=True)
    denied = await forbidden_changes(index, Identity("bob"), result.changes, batch_lookup([prod, dev], store))
    assert [(d.kind, d.name, d.verb, d.cluster) for d in denied] == [("VirtualMachine", "b", "create", "dev")]
    # moving a VM out of prod needs rights in the target too
    await store.apply([prod], correlation_id="c2")
    moved = res("VirtualMachine", "a", {"cluster": "dev", "cpu": {"cores": 1}, "memory": {"size": "1Gi"}})
    result = await store.apply([moved], correlation_id="c3", dry_run=True)
    denied = await forbidden_changes(index, Identity("bob"), result.changes, batch_lookup([moved], store))
    assert [(d.name, d.verb, d.cluster) for d in denied] == [("a", "update", "dev")]


@pytest.mark.anyio
async def test_the_index_follows_the_store(store: Store) -> None:
    index = RbacIndex()
    await index.load(store)
    assert not index.allowed(CAROL, "list", "VirtualMachine")
    async with anyio.create_task_group() as tg:
        tg.start_soon(index.follow, store)
        await store.apply([binding("view", "viewer", [("Group", "virtplane-viewers")])], correlation_id="c")
        with anyio.fail_after(10):
            while not index.allowed(CAROL, "list", "VirtualMachine"):
                await anyio.sleep(0.02)
        await store.delete("RoleBinding", "view", correlation_id="d")
        with anyio.fail_after(10):
            while index.allowed(CAROL, "list", "VirtualMachine"):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
