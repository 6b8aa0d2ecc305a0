"""Leases for leader election: one key per scope (a cluster, or the global scope), held under an etcd lease.

``/virtplane/leases/clusters/<scope>`` holds the identity of the replica leading that scope, attached to the
replica's lease: when the replica dies its lease expires and the key goes with it.
"""

from __future__ import annotations

from controller.store import codec
from controller.store._etcd import EtcdKV, compare_mod, op_put

PREFIX = codec.ROOT + "leases/clusters/"


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
