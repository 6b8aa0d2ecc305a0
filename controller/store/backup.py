"""Backup and restore of the whole store: every spec (with the metadata the server set: uid, generation,
creation time, finalizers, source, owners) and every status, at one etcd revision. Events (they expire)
and leases (they belong to running processes) are left out.

A restore goes into an empty store only, one object at a time (spec and status in one transaction, each
guarded by "the key does not exist"), so it never overwrites anything. Because uids are kept, the
controllers of a restored server recognise the libvirt domains they own (their owner stamp carries the
uid) and take them over as they are — nothing is redefined or restarted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.store import codec
from controller.store._etcd import compare_mod, op_put
from controller.store.errors import StoreError
from controller.store.store import Store
from specs.kinds import KINDS, parse_resource

BACKUP_VERSION = "virtplane.io/backup/v1"


class RestoreRefused(StoreError):
    """The store is not empty, or the backup cannot be read; nothing was written."""


async def take_backup(store: Store) -> dict[str, Any]:
    snapshot = await store.load_all(tuple(KINDS))
    objects = [r.model_dump(mode="json", exclude=codec.EXCLUDE_RV, exclude_none=True)
               for kind in KINDS for r in snapshot.specs.get(kind, ())]
    statuses = [{"kind": kind, "name": name, "status": status.model_dump(mode="json", exclude_none=True)}
                for kind in KINDS for name, (status, _) in sorted(snapshot.statuses.get(kind, {}).items())]
    return {"apiVersion": BACKUP_VERSION, "revision": snapshot.revision,
            "takenAt": datetime.now(UTC).isoformat(), "objects": objects, "statuses": statuses,
            "skipped": snapshot.undecodable}


async def restore_backup(store: Store, backup: dict[str, Any]) -> int:
    """Write a backup into an empty store; returns the number of objects written."""
    if backup.get("apiVersion") != BACKUP_VERSION:
        raise RestoreRefused(f"not a virtplane backup (apiVersion {backup.get('apiVersion')!r}, expected "
                             f"{BACKUP_VERSION})")
    present = sum(len(items) for items in (await store.load_all(tuple(KINDS))).specs.values())
    if present:
        raise RestoreRefused(f"the store already holds {present} object(s); restore goes into an empty store")
    statuses = {(s["kind"], s["name"]): s["status"] for s in backup.get("statuses", [])}
    resources = []
    for raw in backup.get("objects", []):
        try:
            resources.append(parse_resource(raw))
        except ValueError as exc:
            raise RestoreRefused(f"{raw.get('kind')}/{(raw.get('metadata') or {}).get('name')}: {exc}") from exc
    for resource in resources:
        key = codec.spec_key(resource.kind, resource.metadata.name)
        ops = [op_put(key, codec.encode_resource(resource))]
        status = statuses.get((resource.kind, resource.metadata.name))
        if status is not None:
            model = codec.status_model(resource.kind).model_validate(status)
            ops.append(op_put(codec.status_key(resource.kind, resource.metadata.name), codec.encode_status(model)))
        resp = await store.kv.txn([compare_mod(key, 0)], ops, [])
        if not resp.succeeded:
            raise RestoreRefused(f"{resource.kind}/{resource.metadata.name} appeared while restoring; stopped")
    return len(resources)
