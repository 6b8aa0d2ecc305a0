"""VirtualMachinePool planning: which replica VMs and boot disks should exist. Pure.

Replica ``i`` of pool ``web`` is the VirtualMachine ``web-<i>`` booting from the Disk ``web-<i>-boot``,
a clone of ``spec.baseDisk``. Both carry an ownerReference to the pool and the label
``virtplane.io/pool=<pool>``. Scaling down removes the highest indices first.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from reconcilers.plan import Action, Plan
from reconcilers.pool.actions import ApplyObjects, DeleteObjects
from specs.disk import Disk
from specs.kinds import parse_resource
from specs.meta import Resource
from specs.pool import VirtualMachinePool
from specs.vm import VirtualMachine

POOL_LABEL = "virtplane.io/pool"


def replica_names(pool: str, index: int) -> tuple[str, str]:
    return f"{pool}-{index}", f"{pool}-{index}-boot"


def replica_objects(pool: VirtualMachinePool, index: int, storage_domain: str) -> tuple[Disk, VirtualMachine]:
    spec = pool.spec
    vm_name, disk_name = replica_names(pool.metadata.name, index)
    owner = [{"kind": "VirtualMachinePool", "name": pool.metadata.name, "uid": pool.metadata.uid or ""}]
    labels = {**spec.template.metadata.labels, POOL_LABEL: pool.metadata.name}
    disk = parse_resource({
        "apiVersion": "virtplane.io/v1", "kind": "Disk",
        "metadata": {"name": disk_name, "labels": labels, "ownerReferences": owner},
        "spec": {"storageDomain": storage_domain,
                 "source": {"clone": {"disk": spec.baseDisk, "mode": spec.cloneMode}}},
    })
    template = spec.template.spec.model_dump(mode="json", exclude_defaults=True, exclude={"diskBus"})
    vm = parse_resource({
        "apiVersion": "virtplane.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": vm_name, "labels": labels, "annotations": dict(spec.template.metadata.annotations),
                     "ownerReferences": owner},
        "spec": {**template, "cluster": spec.cluster,
                 "disks": [{"disk": disk_name, "bus": spec.template.spec.diskBus, "bootOrder": 1}]},
    })
    assert isinstance(disk, Disk) and isinstance(vm, VirtualMachine)
    return disk, vm


def plan_pool(
    pool: VirtualMachinePool,
    storage_domain: str,
    existing_vms: Collection[str],
    stored: Mapping[tuple[str, str], Resource],
) -> Plan:
    """``existing_vms``: names of VMs that carry this pool's label; ``stored``: the replica objects as stored
    (by (kind, name)), so that only replicas that are missing or differ are applied."""
    owner = f"VirtualMachinePool/{pool.metadata.name}"
    wanted: list[Resource] = []
    if pool.metadata.deletionTimestamp is None:
        for index in range(pool.spec.replicas):
            wanted.extend(replica_objects(pool, index, storage_domain))
    wanted_vms = {r.metadata.name for r in wanted if r.kind == "VirtualMachine"}
    delete: list[tuple[str, str]] = []
    prefix = pool.metadata.name + "-"
    for name in sorted(existing_vms, key=lambda n: _index(n, prefix), reverse=True):
        if name not in wanted_vms:
            delete += [("VirtualMachine", name), ("Disk", f"{name}-boot")]
    changed = tuple(r for r in wanted if _differs(r, stored.get((r.kind, r.metadata.name))))
    actions: list[Action] = []
    if changed:
        created = sum(1 for r in changed if (r.kind, r.metadata.name) not in stored)
        why = f"{created} to create" if created == len(changed) else f"{len(changed)} to create or update"
        actions.append(ApplyObjects(owner, changed, reason=f"spec.replicas {pool.spec.replicas}: {why}"))
    if delete:
        actions.append(DeleteObjects(owner, tuple(delete),
                                     reason=f"spec.replicas {pool.spec.replicas}: {len(delete) // 2} too many"))
    return Plan(tuple(actions))


def _differs(want: Resource, have: Resource | None) -> bool:
    """What the store compares when it decides an apply changes an object: spec, labels, annotations."""
    if have is None:
        return True
    return (
        want.spec != have.spec
        or dict(want.metadata.labels) != dict(have.metadata.labels)
        or dict(want.metadata.annotations) != dict(have.metadata.annotations)
    )


def _index(name: str, prefix: str) -> int:
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else -1
