"""Login sessions and service-account API tokens in etcd.

::

    /virtplane/sessions/<sha256 of the token>   {id, user, groups, created, expires, address}, on its own lease
    /virtplane/tokens/<sha256 of the token>     {id, account, description, created, expires}

A bearer secret is handed out once and never stored: etcd holds its SHA-256 (the key), so reading etcd
gives no usable credential. A session lives on an etcd lease of its TTL, so every replica sees it, it goes
away by itself when it expires, and a logout (``revoke_session``) deletes it at once everywhere. ``id`` is
the first 16 hex digits of the hash: enough to name a session or token in lists and in the audit log,
useless as a credential.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from controller.store import codec
from controller.store._etcd import EtcdKV, op_delete, op_put
from controller.store.errors import StoreError

SESSIONS = codec.ROOT + "sessions/"
TOKENS = codec.ROOT + "tokens/"
SESSION_PREFIX = "vps_"  # so a leaked secret says what it is (and scanners can find it)
TOKEN_PREFIX = "vpt_"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class SessionRecord:
    id: str
    user: str
    groups: tuple[str, ...]
    created: datetime
    expires: datetime
    address: str
    lease: int

    def to_json(self) -> bytes:
        body = asdict(self) | {"created": self.created.isoformat(), "expires": self.expires.isoformat()}
        return json.dumps(body).encode()

    @classmethod
    def from_json(cls, value: bytes) -> SessionRecord:
        raw = json.loads(value)
        return cls(
            id=raw["id"], user=raw["user"], groups=tuple(raw["groups"]), address=raw.get("address", ""),
            created=datetime.fromisoformat(raw["created"]), expires=datetime.fromisoformat(raw["expires"]),
            lease=int(raw.get("lease", 0)),
        )


@dataclass(frozen=True)
class TokenRecord:
    id: str
    account: str
    description: str
    created: datetime
    expires: datetime | None

    def to_json(self) -> bytes:
        body = asdict(self) | {
            "created": self.created.isoformat(),
            "expires": self.expires.isoformat() if self.expires else None,
        }
        return json.dumps(body).encode()

    @classmethod
    def from_json(cls, value: bytes) -> TokenRecord:
        raw = json.loads(value)
        return cls(
            id=raw["id"], account=raw["account"], description=raw.get("description", ""),
            created=datetime.fromisoformat(raw["created"]),
            expires=datetime.fromisoformat(raw["expires"]) if raw.get("expires") else None,
        )


class Identities:
    """Sessions and API tokens (``store.identities``)."""

    def __init__(self, kv: EtcdKV) -> None:
        self.kv = kv

    # -- sessions -----------------------------------------------------------------------------------

    async def create_session(
        self, user: str, groups: tuple[str, ...], ttl: int, address: str, *, now: datetime | None = None
    ) -> tuple[str, SessionRecord]:
        """A new session for ``user``: (the bearer secret, shown once; the stored record)."""
        secret = SESSION_PREFIX + secrets.token_urlsafe(32)
        digest = secret_hash(secret)
        now = now or datetime.now(UTC)
        lease = await self.kv.lease_grant(ttl)
        record = SessionRecord(digest[:16], user, tuple(sorted(groups)), now, now + timedelta(seconds=ttl),
                               address, lease)
        await self.kv.txn([], [op_put((SESSIONS + digest).encode(), record.to_json(), lease)])
        return secret, record

    async def session(self, secret: str, *, now: datetime | None = None) -> SessionRecord | None:
        """The live session of ``secret``, or None (unknown, logged out, or expired)."""
        if not secret.startswith(SESSION_PREFIX):
            return None
        resp = await self.kv.range((SESSIONS + secret_hash(secret)).encode())
        if not resp.kvs:
            return None
        record = SessionRecord.from_json(resp.kvs[0].value)
        if record.expires <= (now or datetime.now(UTC)):  # the lease may outlive expires by < 1 s
            return None
        return record

    async def revoke_session(self, secret: str) -> SessionRecord | None:
        """Log out: delete the session (and its lease). The record that was removed, or None."""
        if not secret.startswith(SESSION_PREFIX):
            return None
        key = (SESSIONS + secret_hash(secret)).encode()
        resp = await self.kv.range(key)
        if not resp.kvs:
            return None
        record = SessionRecord.from_json(resp.kvs[0].value)
        await self.kv.txn([], [op_delete(key)])
        if record.lease:
            # The key is gone already; a lease that expired meanwhile is not an error.
            with contextlib.suppress(StoreError):
                await self.kv.lease_revoke(record.lease)
        return record

    async def list_sessions(self) -> list[SessionRecord]:
        kvs, _ = await self.kv.range_prefix(SESSIONS.encode())
        return sorted((SessionRecord.from_json(kv.value) for kv in kvs), key=lambda r: r.created)

    # -- API tokens ---------------------------------------------------------------------------------

    async def create_token(
        self, account: str, description: str = "", ttl: int | None = None, *, now: datetime | None = None
    ) -> tuple[str, TokenRecord]:
        """A new API token for service account ``account``: (the bearer secret, shown once; the record)."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = secret_hash(secret)
        now = now or datetime.now(UTC)
        expires = now + timedelta(seconds=ttl) if ttl else None
        record = TokenRecord(digest[:16], account, description, now, expires)
        await self.kv.txn([], [op_put((TOKENS + digest).encode(), record.to_json())])
        return secret, record

    async def token(self, secret: str, *, now: datetime | None = None) -> TokenRecord | None:
        if not secret.startswith(TOKEN_PREFIX):
            return None
        resp = await self.kv.range((TOKENS + secret_hash(secret)).encode())
        if not resp.kvs:
            return None
        record = TokenRecord.from_json(resp.kvs[0].value)
        if record.expires is not None and record.expires <= (now or datetime.now(UTC)):
            return None
        return record

    async def list_tokens(self) -> list[TokenRecord]:
        kvs, _ = await self.kv.range_prefix(TOKENS.encode())
        return sorted((TokenRecord.from_json(kv.value) for kv in kvs), key=lambda r: r.created)

    async def revoke_token(self, token_id: str) -> TokenRecord | None:
        """Revoke the token whose id is ``token_id``; the record, or None if there is none."""
        kvs, _ = await self.kv.range_prefix(TOKENS.encode())
        for kv in kvs:
            record = TokenRecord.from_json(kv.value)
            if record.id == token_id:
                await self.kv.txn([], [op_delete(bytes(kv.key))])
                return record
        return None
