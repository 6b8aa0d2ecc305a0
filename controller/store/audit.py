"""The audit log: who wrote what, when, from where, and whether it was allowed.

::

    /virtplane/audit/<time>-<id>    one AuditRecord (JSON), no lease: kept apart from the 1-hour events

Retention is by count: after every ``trim_every`` appends the oldest records beyond ``max_records`` are
deleted in one range delete (keys sort by time). With the default 100,000 records of ~300 bytes the log
holds ~30 MB of etcd at most. Nothing secret goes in: no passwords, no bearer tokens (a session or API
token appears only as its 16-digit id).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from controller.store import codec
from controller.store._etcd import EtcdKV, op_put, prefix_end, scan_newest

AUDIT = codec.ROOT + "audit/"
DEFAULT_MAX_RECORDS = 100_000
DEFAULT_TRIM_EVERY = 100
MAX_OBJECTS_PER_RECORD = 50  # an apply of 10,000 objects is one record naming the first 50 and the count


@dataclass(frozen=True)
class AuditRecord:
    time: datetime
    user: str  # "admin" for the static token, a login name, or "serviceaccount:NAME"; "-" if unauthenticated
    verb: str  # create, update, delete, apply, login, logout, token-create, token-revoke, ...
    allowed: bool
    code: int  # the HTTP status answered
    address: str = ""
    correlation_id: str = ""
    credential: str = ""  # "static", "session:<id>", "token:<id>"
    objects: tuple[str, ...] = ()  # "Kind/name" (first MAX_OBJECTS_PER_RECORD)
    object_count: int = 0
    clusters: tuple[str, ...] = ()
    reason: str = ""  # why it was refused, or what failed
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def to_json(self) -> bytes:
        return json.dumps(asdict(self) | {"time": self.time.isoformat()}).encode()

    @classmethod
    def from_json(cls, value: bytes) -> AuditRecord:
        raw = json.loads(value)
        raw["time"] = datetime.fromisoformat(raw["time"])
        raw["objects"] = tuple(raw.get("objects", ()))
        raw["clusters"] = tuple(raw.get("clusters", ()))
        return cls(**raw)

    def to_wire(self) -> dict[str, object]:
        return asdict(self) | {"time": self.time.isoformat()}


def _key_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f") + "Z"


class AuditLog:
    """``store.audit``: append, query, trim."""

    def __init__(self, kv: EtcdKV, *, max_records: int = DEFAULT_MAX_RECORDS,
                 trim_every: int = DEFAULT_TRIM_EVERY) -> None:
        self.kv = kv
        self.max_records = max_records
        self.trim_every = trim_every
        self._appended = 0
        self._trim_lock = asyncio.Lock()

    async def append(self, record: AuditRecord) -> None:
        key = f"{AUDIT}{_key_time(record.time)}-{record.id}".encode()
        await self.kv.txn([], [op_put(key, record.to_json())])
        self._appended += 1
        if self._appended % self.trim_every == 0:
            await self.trim()

    async def count(self) -> int:
        resp = await self.kv.range(AUDIT.encode(), prefix_end(AUDIT.encode()), count_only=True)
        return int(resp.count)

    async def trim(self) -> int:
        """Delete the oldest records beyond ``max_records``; how many went."""
        async with self._trim_lock:
            excess = await self.count() - self.max_records
            if excess <= 0:
                return 0
            start = AUDIT.encode()
            oldest = await self.kv.range(start, prefix_end(start), limit=excess, keys_only=True)
            last = bytes(oldest.kvs[-1].key)
            return await self.kv.delete_range(start, last + b"\0")

    async def query(
        self, *, user: str | None = None, since: datetime | None = None, limit: int = 500
    ) -> list[AuditRecord]:
        """The newest ``limit`` records (of ``user``, from ``since`` on), oldest first."""
        start = (AUDIT + _key_time(since)).encode() if since else AUDIT.encode()

        def keep(value: bytes) -> AuditRecord | None:
            record = AuditRecord.from_json(value)
            return record if user is None or record.user == user else None

        return await scan_newest(self.kv, start, prefix_end(AUDIT.encode()), limit, keep)
