"""``Store.apply``: read the current objects, compute the changes, write them compare-and-swap.

Steps, in this order, so that nothing is written unless everything was validated first:

1. read the current objects at one revision — one ranged read per kind prefix when a kind has many
   objects (or the whole ``/virtplane/specs/`` when pruning), single-key reads otherwise;
2. compute one ``Change`` per object (created / configured / unchanged, and deleted for prune), check
   resourceVersion preconditions and the size of every object;
3. write every changed object in ONE etcd transaction, each guarded by a mod_revision compare —
   or, when that does not fit in ``max_txn_ops`` / ``max_request_bytes``, in bounded batches
   (``PartialApplyError`` if a batch after the first fails).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal
from uuid import uuid4

from pydantic_core import to_jsonable_python

from controller.store import codec
from controller.store._etcd import EtcdKV, compare_mod, op_delete, op_get, op_put
from controller.store.errors import (
    ConflictError,
    ObjectRef,
    PartialApplyError,
    StoreError,
    StoreUnavailable,
    TooLargeError,
    UndecodableError,
)
from specs.meta import Resource

Action = Literal["created", "configured", "unchanged", "deleted"]

# Room left in each request for the transaction's own framing and etcd's raft header.
REQUEST_OVERHEAD = 4096
# Up to this many objects of one kind are read key by key; more → one ranged read of the kind.
FEW_PER_KIND = 16


@dataclass(frozen=True)
class Change:
    """One object's outcome. ``after`` is what is (or, dry-run, would be) stored; for a deletion it
    is None, or the object marked with deletionTimestamp when finalizers hold it."""

    kind: str
    name: str
    action: Action
    before: Resource | None
    after: Resource | None


@dataclass(frozen=True)
class ApplyResult:
    revision: int  # etcd revision after the last write (the read revision when nothing was written)
    changes: list[Change]
    transactions: int  # write transactions used: 0 (nothing to write / dry run), 1, or the batch count


# The embedded etcd is started with these limits (--max-txn-ops, --max-request-bytes). etcd 3.4 refuses to
# start on a data dir whose WAL holds an entry over 10 MiB ("wal: max entry size limit exceeded"), and one
# request is one entry: requests stay well below that (room for raft's framing), and apply splits what
# does not fit into bounded transactions.
DEFAULT_MAX_TXN_OPS = 16384
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
ETCD_WAL_ENTRY_LIMIT = 10 * 1024 * 1024
# One object (its key and JSON) may not exceed this, whatever the request limit: a spec is not a blob.
MAX_OBJECT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_txn_ops: int
    max_request_bytes: int

    @property
    def request_bytes(self) -> int:
        """Payload of one transaction (compares and ops)."""
        return self.max_request_bytes - REQUEST_OVERHEAD

    @property
    def object_bytes(self) -> int:
        return min(self.request_bytes, MAX_OBJECT_BYTES)


@dataclass
class _Stored:
    raw: dict[str, Any]
    mod_revision: int
    _resource: Resource | None = None
    key: bytes = b""
    problem: str | None = None  # the stored value is not a JSON object

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.raw.get("metadata")
        return meta if isinstance(meta, dict) else {}

    @property
    def resource(self) -> Resource:
        if self._resource is None:
            try:
                if self.problem is not None:
                    raise ValueError(self.problem)
                self._resource = codec.resource_from_raw(self.raw, self.mod_revision)
            except ValueError as exc:
                _, kind, name = codec.parse_key(self.key.decode(errors="replace")) or ("spec", "?", "?")
                raise UndecodableError(kind, name, str(exc).splitlines()[0] if str(exc) else "invalid") from exc
        return self._resource


@dataclass
class _Write:
    change: Change
    expected: int  # mod_revision the key must still have (0: must not exist)
    compares: list[Any] = field(default_factory=list)
    ops: list[Any] = field(default_factory=list)
    size: int = 0

    @property
    def ref(self) -> ObjectRef:
        return (self.change.kind, self.change.name)


async def apply_objects(
    kv: EtcdKV,
    limits: Limits,
    objects: Sequence[Resource],
    *,
    correlation_id: str,
    source: str | None,
    dry_run: bool,
    prune: bool,
    now: datetime,
    user: str | None = None,
    prefetched: Prefetched | None = None,
) -> ApplyResult:
    if prune and not source:
        raise ValueError("prune needs a source: only objects applied with the same source are pruned")
    seen: set[ObjectRef] = set()
    for obj in objects:
        ref = (obj.kind, obj.metadata.name)
        if ref in seen:
            raise StoreError(f"{obj.kind}/{obj.metadata.name} appears twice in one apply")
        seen.add(ref)

    current, read_revision = await _read_current(kv, objects, whole=prune, prefetched=prefetched)
    changes: list[Change] = []
    writes: list[_Write] = []
    for obj in objects:
        key = codec.spec_key(obj.kind, obj.metadata.name)
        write = _plan_one(obj, current.get(key), correlation_id=correlation_id, source=source, now=now, user=user)
        changes.append(write.change)
        if write.change.action != "unchanged":
            writes.append(write)
    if prune:
        wanted = {codec.spec_key(o.kind, o.metadata.name) for o in objects}
        for key, stored in sorted(current.items()):
            if key not in wanted and stored.meta.get("source") == source:
                pruned = _plan_delete(stored, correlation_id=correlation_id, now=now, user=user)
                if pruned is not None:
                    changes.append(pruned.change)
                    writes.append(pruned)
    for write in writes:
        _encode(write, limits)
    if dry_run or not writes:
        return ApplyResult(read_revision, changes, 0)

    revision, count, written = await _write_batches(kv, limits, writes)
    by_ref = {w.ref: w.change for w in written}
    final = [by_ref.get((c.kind, c.name), c) for c in changes]
    return ApplyResult(revision, final, count)


# -- 1. read -------------------------------------------------------------------------------------

async def _read_current(
    kv: EtcdKV, objects: Sequence[Resource], *, whole: bool, prefetched: Prefetched | None = None
) -> tuple[dict[bytes, _Stored], int]:
    """Current spec documents by key, all read at one revision (the prefetch's, when there is one: its
    kinds are not read again)."""
    if whole:
        kvs, revision = await kv.range_prefix(codec.SPECS.encode())
        return _index(kvs), revision
    names: dict[str, list[str]] = defaultdict(list)
    for obj in objects:
        names[obj.kind].append(obj.metadata.name)
    index: dict[bytes, _Stored] = {}
    revision = 0
    if prefetched is not None:
        revision = prefetched.revision
        for kind in prefetched.kinds.keys() & names.keys():
            index.update(prefetched.kinds[kind])
            del names[kind]
    prefixes = [codec.kind_prefix(k) for k, ns in names.items() if len(ns) > FEW_PER_KIND]
    keys = [codec.spec_key(k, n) for k, ns in names.items() if len(ns) <= FEW_PER_KIND for n in ns]
    kvs = []
    if not revision:  # no prefetch: the first read fixes the revision for the others
        if prefixes:
            first, revision = await kv.range_prefix(prefixes.pop())
            kvs.extend(first)
        elif keys:
            resp = await kv.range(keys.pop())
            revision = resp.header.revision
            kvs.extend(resp.kvs)
        else:
            revision = await kv.revision()
    reads = [kv.range_prefix(p, revision=revision) for p in prefixes]
    singles = [kv.range(k, revision=revision) for k in keys]
    for got, _ in await asyncio.gather(*reads):
        kvs.extend(got)
    for resp in await asyncio.gather(*singles):
        kvs.extend(resp.kvs)
    index.update(_index(kvs))
    return index, revision


@dataclass(frozen=True)
class Prefetched:
    revision: int
    kinds: dict[str, dict[bytes, _Stored]]  # kind -> every spec document of the kind at ``revision``


class Prefetch:
    """Whole kinds' spec documents read (and decoded, in a worker thread) while an apply's objects are
    still arriving, all at the revision of the first read: the apply then only compares. A write planned
    from them is compare-and-swap like any other; ``Store.apply`` plans again from a fresh read if one
    lost its race (the prefetch is older than a plain read would be)."""

    def __init__(self, kv: EtcdKV) -> None:
        self._kv = kv
        self._reads: dict[str, asyncio.Task[tuple[dict[bytes, _Stored], int]]] = {}
        self._first: asyncio.Task[tuple[dict[bytes, _Stored], int]] | None = None

    def want(self, kind: str) -> None:
        """Start reading ``kind`` (once)."""
        if kind in self._reads:
            return
        task = asyncio.ensure_future(self._read(kind, self._first))
        self._reads[kind] = task
        self._first = self._first or task

    async def _read(
        self, kind: str, first: asyncio.Task[tuple[dict[bytes, _Stored], int]] | None
    ) -> tuple[dict[bytes, _Stored], int]:
        revision = (await first)[1] if first is not None else 0
        kvs, revision = await self._kv.range_prefix(codec.kind_prefix(kind), revision=revision)
        return await asyncio.to_thread(_index, kvs), revision

    async def result(self) -> Prefetched | None:
        """What was read; None if nothing was wanted or a read failed (then the apply reads as usual)."""
        if not self._reads:
            return None
        try:
            done = {kind: await task for kind, task in self._reads.items()}
        except StoreError:
            return None
        revision = next(iter(done.values()))[1]
        return Prefetched(revision, {kind: index for kind, (index, _) in done.items()})

    def cancel(self) -> None:
        for task in self._reads.values():
            task.cancel()


def _index(kvs: list[Any]) -> dict[bytes, _Stored]:
    index = {}
    for kv in kvs:
        key = bytes(kv.key)
        try:
            index[key] = _Stored(codec.decode_raw(kv.value), kv.mod_revision, key=key)
        except ValueError as exc:  # planted or corrupt: an error if this apply touches it, else ignored
            index[key] = _Stored({}, kv.mod_revision, key=key, problem=str(exc).splitlines()[0])
    return index


# -- 2. compute ----------------------------------------------------------------------------------

def _plan_one(
    desired: Resource, stored: _Stored | None, *, correlation_id: str, source: str | None, now: datetime,
    user: str | None = None,
) -> _Write:
    kind, name = desired.kind, desired.metadata.name
    precondition = desired.metadata.resourceVersion
    actual = stored.mod_revision if stored is not None else 0
    if precondition is not None and int(precondition) != actual:
        raise ConflictError(kind, name, int(precondition), actual, "resourceVersion precondition")

    if stored is None:
        meta = desired.metadata.model_copy(update={
            "uid": str(uuid4()), "generation": 1, "resourceVersion": None, "creationTimestamp": now,
            "deletionTimestamp": None, "correlationId": correlation_id, "source": source, "updatedBy": user,
        })
        after = desired.model_copy(update={"metadata": meta})
        return _Write(Change(kind, name, "created", None, after), expected=0)

    raw_meta = stored.meta
    spec_changed = to_jsonable_python(desired.spec) != stored.raw.get("spec")
    changed = (
        spec_changed
        or dict(desired.metadata.labels) != raw_meta.get("labels", {})
        or dict(desired.metadata.annotations) != raw_meta.get("annotations", {})
        or (source is not None and source != raw_meta.get("source"))
    )
    if not changed:
        # Nothing to write. The stored copy is not decoded (for 10,000 unchanged objects that is most
        # of the cost of a diff): before/after are the desired object as given.
        return _Write(Change(kind, name, "unchanged", desired, desired), expected=actual)
    before = stored.resource
    meta = before.metadata.model_copy(update={
        "labels": desired.metadata.labels,
        "annotations": desired.metadata.annotations,
        "generation": (before.metadata.generation or 0) + (1 if spec_changed else 0),
        "resourceVersion": None,
        "correlationId": correlation_id,
        "updatedBy": user,
        "source": source if source is not None else before.metadata.source,
    })
    after = desired.model_copy(update={"metadata": meta})
    return _Write(Change(kind, name, "configured", before, after), expected=actual)


def _plan_delete(stored: _Stored, *, correlation_id: str, now: datetime, user: str | None = None) -> _Write | None:
    """Delete (no finalizers) or mark with deletionTimestamp; None if already being deleted."""
    before = stored.resource
    kind, name = before.kind, before.metadata.name
    if before.metadata.finalizers:
        if before.metadata.deletionTimestamp is not None:
            return None
        meta = before.metadata.model_copy(
            update={"deletionTimestamp": now, "correlationId": correlation_id, "resourceVersion": None,
                    "updatedBy": user}
        )
        marked = before.model_copy(update={"metadata": meta})
        return _Write(Change(kind, name, "deleted", before, marked), expected=stored.mod_revision)
    return _Write(Change(kind, name, "deleted", before, None), expected=stored.mod_revision)


def _encode(write: _Write, limits: Limits) -> None:
    """Build the write's compare and ops; TooLargeError if the object cannot fit in a request."""
    change = write.change
    key = codec.spec_key(change.kind, change.name)
    write.compares = [compare_mod(key, write.expected)]
    if change.after is not None:
        value = codec.encode_resource(change.after)
        size = len(value) + len(key)
        if size > limits.object_bytes:
            raise TooLargeError(change.kind, change.name, size, limits.object_bytes)
        write.ops = [op_put(key, value)]
    else:
        write.ops = [op_delete(key), op_delete(codec.status_key(change.kind, change.name))]
    write.size = sum(m.ByteSize() + 8 for m in (*write.compares, *write.ops))


# -- 3. write ------------------------------------------------------------------------------------

def plan_batches(writes: list[_Write], limits: Limits) -> list[list[_Write]]:
    """Greedy batches: each within max_txn_ops (compares and ops alike) and the request size."""
    batches: list[list[_Write]] = []
    batch: list[_Write] = []
    ops = size = 0
    for write in writes:
        n = max(len(write.ops), len(write.compares))
        if batch and (ops + n > limits.max_txn_ops or size + write.size > limits.request_bytes):
            batches.append(batch)
            batch, ops, size = [], 0, 0
        batch.append(write)
        ops += n
        size += write.size
    if batch:
        batches.append(batch)
    return batches


async def _write_batches(kv: EtcdKV, limits: Limits, writes: list[_Write]) -> tuple[int, int, list[_Write]]:
    batches = plan_batches(writes, limits)
    written: list[_Write] = []
    revision = 0
    for index, batch in enumerate(batches):
        try:
            revision = await _commit(kv, batch)
        except StoreUnavailable as exc:
            if not written:
                raise
            rest = tuple(w.ref for b in batches[index + 1:] for w in b)  # only on failure: O(N)
            raise PartialApplyError(
                tuple(w.ref for w in written), rest, exc, tuple(w.ref for w in batch)
            ) from exc
        except StoreError as exc:
            if not written:
                raise
            rest = tuple(w.ref for b in batches[index + 1:] for w in b)
            raise PartialApplyError(
                tuple(w.ref for w in written), tuple(w.ref for w in batch) + rest, exc
            ) from exc
        written.extend(_stamp(w, revision) for w in batch)
    return revision, len(batches), written


async def _commit(kv: EtcdKV, batch: list[_Write]) -> int:
    compares = [c for w in batch for c in w.compares]
    ops = [o for w in batch for o in w.ops]
    resp = await kv.txn(compares, ops)
    if resp.succeeded:
        return int(resp.header.revision)
    raise await _find_conflict(kv, batch)


async def _find_conflict(kv: EtcdKV, batch: list[_Write]) -> ConflictError:
    """Which object lost the race: read the batch's keys back (one read transaction)."""
    keys = [codec.spec_key(w.change.kind, w.change.name) for w in batch]
    resp = await kv.txn([], [op_get(k) for k in keys])
    for write, r in zip(batch, resp.responses, strict=True):
        kvs = r.response_range.kvs
        actual = kvs[0].mod_revision if kvs else 0
        if actual != write.expected:
            return ConflictError(write.change.kind, write.change.name, write.expected, actual)
    first = batch[0].change
    return ConflictError(first.kind, first.name, batch[0].expected, None, "changed and changed back")


def _stamp(write: _Write, revision: int) -> _Write:
    """After a commit, ``after`` carries its new resourceVersion (the transaction's revision)."""
    after = write.change.after
    if after is not None:
        meta = after.metadata.model_copy(update={"resourceVersion": str(revision)})
        after = after.model_copy(update={"metadata": meta})
    return replace(write, change=replace(write.change, after=after))
