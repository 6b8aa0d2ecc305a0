"""Leases for leader election: one key per scope (a cluster, or the global scope), held under an etcd lease.

``/virtplane/leases/clusters/<scope>`` holds the identity of the replica leading that scope, attached to the
replica's lease: when the replica dies its lease expires and the key goes with it.
``/virtplane/leases/replicas/<identity>`` says a replica is alive (same lease), so replicas can share the
scopes out between them.
"""

from __future__ import annotations

from controller.store import codec
from controller.store._etcd import EtcdKV, compare_lease, compare_mod, op_delete, op_put

PREFIX = codec.ROOT + "leases/clusters/"
REPLICAS = codec.ROOT + "leases/replicas/"


class Leases:
    def __init__(self, kv: EtcdKV) -> None:
        self.kv = kv

    async def grant(self, ttl: int) -> int:
        return await self.kv.lease_grant(ttl)

    async def keepalive(self, lease_id: int) -> int:
        """Refresh once; the remaining TTL (0: the lease is gone)."""
        return await self.kv.lease_keepalive(lease_id)

    async def revoke(self, lease_id: int) -> None:
        await self.kv.lease_revoke(lease_id)

    async def acquire(self, scope: str, identity: str, lease_id: int) -> bool:
        """Take ``scope`` for ``identity`` under ``lease_id`` if nobody holds it. True when taken."""
        key = (PREFIX + scope).encode()
        resp = await self.kv.txn([compare_mod(key, 0)], [op_put(key, identity.encode(), lease_id)])
        return bool(resp.succeeded)

    async def holder(self, scope: str) -> tuple[str, int] | None:
        """(identity, lease id) holding ``scope``, or None."""
        got = await self.kv.range((PREFIX + scope).encode())
        if not got.kvs:
            return None
        return bytes(got.kvs[0].value).decode(), int(got.kvs[0].lease)

    async def holders(self) -> dict[str, tuple[str, int]]:
        """Every held scope: {scope: (identity, lease id)}, in one read."""
        kvs, _ = await self.kv.range_prefix(PREFIX.encode())
        return {bytes(kv.key).decode()[len(PREFIX):]: (bytes(kv.value).decode(), int(kv.lease)) for kv in kvs}

    async def release(self, scope: str, lease_id: int) -> bool:
        """Give ``scope`` up if it is still held under ``lease_id``. True when released."""
        key = (PREFIX + scope).encode()
        resp = await self.kv.txn([compare_lease(key, lease_id)], [op_delete(key)])
        return bool(resp.succeeded)

    async def announce(self, identity: str, lease_id: int) -> None:
        """Say this replica is alive for as long as ``lease_id`` lives."""
        await self.kv.txn([], [op_put((REPLICAS + identity).encode(), b"", lease_id)])

    async def replicas(self) -> set[str]:
        """The identities of the replicas alive now."""
        kvs, _ = await self.kv.range_prefix(REPLICAS.encode())
        return {bytes(kv.key).decode()[len(REPLICAS):] for kv in kvs}
