"""Authorization by roles: who may do which verb on which kind, in which cluster.

Sources of rights, in the order they are checked::

    group virtplane:admins            everything (the server's static token; the bootstrap admin)
    RoleBinding objects               role -> users, groups, service accounts; per cluster or global
      roles: admin, operator, viewer  built in (BUILTIN_RULES)
             Role objects             custom rules of kinds and verbs

A binding with ``clusters`` grants its role only on objects of those clusters; a binding without grants it
everywhere, including objects that belong to no cluster (Roles, RoleBindings, the audit log, tokens, a
Host with no cluster). The cluster of an object comes from its body (``object_cluster``): ``spec.cluster``;
a Cluster is its own; a Disk's is its storage domain's; a Snapshot's or a Migration's is its VM's.

``RbacIndex`` holds every Role and RoleBinding in memory, indexed by subject, and is kept current by a
store watch (``follow``), so a check costs dictionary lookups, not etcd reads. A list or watch across
clusters (``cluster=None``) asks for a global right: a per-cluster binding lets you read objects of its
clusters one by one, not list everything.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from controller.api.auth import Authorizer, Identity, authorize
from controller.store import Store
from specs.kinds import KINDS
from specs.meta import Resource
from specs.rbac import BUILTIN_ROLES, PSEUDO_KINDS, READ_VERBS, VERBS, Role, RoleBinding

log = logging.getLogger("virtplane.api.rbac")

ADMINS_GROUP = "virtplane:admins"
SERVICE_ACCOUNT_PREFIX = "serviceaccount:"
OPERATOR_KINDS = ("VirtualMachine", "VirtualMachinePool", "Disk", "Snapshot", "Migration")

# (kinds, verbs) pairs; "*" matches anything.
Rules = tuple[tuple[frozenset[str], frozenset[str]], ...]

BUILTIN_RULES: Mapping[str, Rules] = {
    "admin": ((frozenset({"*"}), frozenset({"*"})),),
    "operator": (
        (frozenset(OPERATOR_KINDS), frozenset({"*"})),
        (frozenset({"*"}), frozenset(READ_VERBS)),
    ),
    "viewer": ((frozenset({"*"}), frozenset(READ_VERBS)),),
}
# Only admins read the audit log and manage tokens: "*" in a read rule of operator/viewer stops short of them.
ADMIN_ONLY_KINDS = frozenset({"AuditRecord", "ApiToken"})
assert set(BUILTIN_RULES) == set(BUILTIN_ROLES)


def _rules_allow(rules: Rules, verb: str, kind: str, *, admin_rule: bool) -> bool:
    for kinds, verbs in rules:
        kind_ok = kind in kinds or ("*" in kinds and (admin_rule or kind not in ADMIN_ONLY_KINDS))
        if kind_ok and (verb in verbs or "*" in verbs):
            return True
    return False


def rules_of(role: Role) -> Rules:
    return tuple((frozenset(r.kinds), frozenset(r.verbs)) for r in role.spec.rules)


@dataclass(frozen=True)
class Grant:
    """One binding as it applies to a caller: the binding's name, its role, and its clusters (None: all)."""

    binding: str
    role: str
    clusters: frozenset[str] | None


class RbacIndex:
    """Every Role and RoleBinding, indexed by subject. Not thread-safe; lives on the event loop."""

    def __init__(self) -> None:
        self.roles: dict[str, Rules] = {}
        self.bindings: dict[str, RoleBinding] = {}
        self._by_subject: dict[tuple[str, str], dict[str, Grant]] = {}
        self.revision = 0

    # -- maintenance ----------------------------------------------------------------------------------

    def put_role(self, role: Role) -> None:
        self.roles[role.metadata.name] = rules_of(role)

    def drop_role(self, name: str) -> None:
        self.roles.pop(name, None)

    def put_binding(self, binding: RoleBinding) -> None:
        self.drop_binding(binding.metadata.name)
        self.bindings[binding.metadata.name] = binding
        clusters = frozenset(binding.spec.clusters) or None
        grant = Grant(binding.metadata.name, binding.spec.role, clusters)
        for subject in binding.spec.subjects:
            self._by_subject.setdefault((subject.kind, subject.name), {})[binding.metadata.name] = grant

    def drop_binding(self, name: str) -> None:
        old = self.bindings.pop(name, None)
        if old is None:
            return
        for subject in old.spec.subjects:
            grants = self._by_subject.get((subject.kind, subject.name))
            if grants is not None:
                grants.pop(name, None)
                if not grants:
                    del self._by_subject[(subject.kind, subject.name)]

    async def load(self, store: Store) -> int:
        """Read every Role and RoleBinding; the revision read at (follow from revision + 1)."""
        snapshot = await store.load_all(("Role", "RoleBinding"))
        self.roles.clear()
        self.bindings.clear()
        self._by_subject.clear()
        for obj in snapshot.specs["Role"]:
            assert isinstance(obj, Role)
            self.put_role(obj)
        for obj in snapshot.specs["RoleBinding"]:
            assert isinstance(obj, RoleBinding)
            self.put_binding(obj)
        self.revision = snapshot.revision
        return snapshot.revision

    async def follow(self, store: Store) -> None:
        """Keep the index current from ``revision + 1`` until cancelled (the watch resumes and re-lists)."""
        async for event in store.watch_objects(self.revision + 1, kinds=("Role", "RoleBinding"), parts=("spec",)):
            if event.kind == "Role":
                if isinstance(event.value, Role):
                    self.put_role(event.value)
                else:
                    self.drop_role(event.name)
            elif isinstance(event.value, RoleBinding):
                self.put_binding(event.value)
            else:
                self.drop_binding(event.name)
            self.revision = event.mod_revision

    # -- questions ------------------------------------------------------------------------------------

    def grants(self, who: Identity) -> list[Grant]:
        """Every binding that applies to ``who`` (as a user or service account, and through each group)."""
        if who.name.startswith(SERVICE_ACCOUNT_PREFIX):
            subjects: list[tuple[str, str]] = [("ServiceAccount", who.name[len(SERVICE_ACCOUNT_PREFIX):])]
        else:
            subjects = [("User", who.name)]
        subjects += [("Group", g) for g in who.groups]
        found: list[Grant] = []
        for subject in subjects:
            found.extend(self._by_subject.get(subject, {}).values())
        return found

    def role_rules(self, role: str) -> tuple[Rules, bool] | None:
        """(rules, whether the role is the built-in admin) or None when the role does not exist."""
        if role in BUILTIN_RULES:
            return BUILTIN_RULES[role], role == "admin"
        rules = self.roles.get(role)
        return (rules, False) if rules is not None else None

    def allowed(
        self, who: Identity, verb: str, kind: str | None, cluster: str | None = None, name: str | None = None
    ) -> bool:
        """May ``who`` do ``verb`` on ``kind`` in ``cluster`` (None: no cluster, or across all of them)?
        Rules are per kind, not per object: ``name`` does not narrow them."""
        if ADMINS_GROUP in who.groups:
            return True
        kind = kind or "*"
        for grant in self.grants(who):
            if grant.clusters is not None and (cluster is None or cluster not in grant.clusters):
                continue
            found = self.role_rules(grant.role)
            if found is not None and _rules_allow(found[0], verb, kind, admin_rule=found[1]):
                return True
        return False

    def clusters_allowed(self, who: Identity, verb: str, kind: str) -> frozenset[str] | None:
        """Where ``who`` may do ``verb`` on ``kind``: None everywhere, else those clusters (maybe none)."""
        if ADMINS_GROUP in who.groups:
            return None
        found: set[str] = set()
        for grant in self.grants(who):
            rules = self.role_rules(grant.role)
            if rules is None or not _rules_allow(rules[0], verb, kind, admin_rule=rules[1]):
                continue
            if grant.clusters is None:
                return None
            found |= grant.clusters
        return frozenset(found)

    def allows_everything(self, who: Identity) -> bool:
        """Every verb on every kind everywhere: the checks of a big apply can be skipped."""
        if ADMINS_GROUP in who.groups:
            return True
        return any(g.clusters is None and g.role == "admin" for g in self.grants(who))


class RbacAuthorizer:
    """The ``Authorizer`` of ``controller.api.auth`` over an ``RbacIndex``."""

    def __init__(self, index: RbacIndex) -> None:
        self.index = index

    def allowed(
        self, who: Identity, verb: str, kind: str | None, cluster: str | None = None, name: str | None = None
    ) -> bool:
        return self.index.allowed(who, verb, kind, cluster, name)

    def allows_everything(self, who: Identity) -> bool:
        return self.index.allows_everything(who)

    def clusters_allowed(self, who: Identity, verb: str, kind: str) -> frozenset[str] | None:
        return self.index.clusters_allowed(who, verb, kind)


# -- the cluster an object belongs to -------------------------------------------------------------------

Lookup = Callable[[str, str], Awaitable[Resource | None]]


async def object_cluster(obj: Resource, lookup: Lookup) -> str | None:
    """The cluster ``obj`` belongs to, from its body (following one reference through ``lookup``)."""
    if obj.kind == "Cluster":
        return obj.metadata.name
    spec = obj.spec
    cluster = getattr(spec, "cluster", None)
    if isinstance(cluster, str):
        return cluster
    ref: tuple[str, str] | None = None
    if obj.kind == "Disk" and getattr(spec, "storageDomain", None):
        ref = ("StorageDomain", spec.storageDomain)
    elif obj.kind in ("Snapshot", "Migration"):
        ref = ("VirtualMachine", spec.vm)
    if ref is None:
        return None
    target = await lookup(*ref)
    found = getattr(target.spec, "cluster", None) if target is not None else None
    return found if isinstance(found, str) else None


def batch_lookup(batch: Iterable[Resource], store: Store) -> Lookup:
    """Look references up in ``batch`` (objects applied together) first, then in the store."""
    mine = {(o.kind, o.metadata.name): o for o in batch}

    async def lookup(kind: str, name: str) -> Resource | None:
        if (kind, name) in mine:
            return mine[(kind, name)]
        return await store.get(kind, name)

    return lookup


def known_kinds() -> tuple[str, ...]:
    return (*KINDS, *PSEUDO_KINDS)


def known_verbs() -> tuple[str, ...]:
    return VERBS


# -- checking the changes of a write ----------------------------------------------------------------------

VERB_OF_ACTION: Mapping[str, str] = {"created": "create", "configured": "update", "deleted": "delete"}


@dataclass(frozen=True)
class Denied:
    """One object the caller may not write: what, which verb, in which cluster (None: global)."""

    kind: str
    name: str
    verb: str
    cluster: str | None

    def describe(self) -> str:
        where = f" in cluster {self.cluster}" if self.cluster else " (global)"
        return f"{self.verb} {self.kind}/{self.name}{where}"


class Change(Protocol):
    kind: str
    name: str
    action: str
    before: Resource | None
    after: Resource | None


async def forbidden_changes(
    authz: RbacAuthorizer | Authorizer, who: Identity, changes: Iterable[Change], lookup: Lookup
) -> list[Denied]:
    """The changes ``who`` may not make. A change that moves an object between clusters needs the verb
    in both; an unchanged object needs nothing (nothing is written)."""
    denied: list[Denied] = []
    for change in changes:
        verb = VERB_OF_ACTION.get(change.action)
        if verb is None:
            continue
        clusters: set[str | None] = set()
        for obj in (change.before, change.after):
            if obj is not None:
                clusters.add(await object_cluster(obj, lookup))
        for cluster in sorted(clusters, key=lambda c: c or ""):
            if not authorize(authz, who, verb, change.kind, change.name, cluster):  # type: ignore[arg-type]
                denied.append(Denied(change.kind, change.name, verb, cluster))
                break
    return denied
