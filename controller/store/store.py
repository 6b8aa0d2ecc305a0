"""``Store``: virtplane objects, statuses and events in etcd, written compare-and-swap.

Key layout and encoding: ``controller.store.codec``. ``apply``: ``controller.store.apply``.
Watches: ``controller.store.watch``. Errors: ``controller.store.errors`` (tree in its docstring).

Public API (all coroutines unless noted)::

    Store.connect(endpoints, *, max_txn_ops=16384, max_request_bytes=32 MiB, timeout=10.0,
                  event_ttl=3600, clock=utcnow) -> Store          (classmethod; StoreUnavailable)
    close();  async with store: ...
    revision() -> int;  compact(revision)
    get(kind, name) -> Resource | None
    list(kind, selector=None) -> (list[Resource], revision)        selector: anything with .matches
    list_page(kind, *, start="", before=None, limit, revision=0) -> Page   one page by name, at one revision
    apply(objects, *, correlation_id, source=None, dry_run=False, prune=False, user=None) -> ApplyResult
    delete(kind, name, *, correlation_id, resource_version=None, user=None) -> Resource | None
    add_finalizer(kind, name, finalizer) -> Resource
    remove_finalizer(kind, name, finalizer) -> Resource | None     (None: it was deleted)
    get_status(kind, name) -> (StatusBase | None, mod_revision)   ((None, 0) if never written)
    list_status(kind) -> dict[name, StatusBase]
    put_status(kind, name, status, expected_revision) -> new status mod_revision
    emit_event(event) -> Event;  list_events(involved=None, correlation_id=None, limit=500)
    load_all(kinds) -> Snapshot                  every spec and status of kinds, read at ONE revision
    watch_objects(start_revision, *, kinds, parts=("spec","status"), known=None) -> AsyncGenerator[WatchEvent]
    watch_events(start_revision) -> AsyncGenerator[WatchEvent]     (watches are not coroutines)
    leases: Leases   grant, keepalive, revoke, acquire(scope, identity, lease), holder(scope)
    identities: Identities   login sessions (on leases) and service-account API tokens (store/identity.py)
    audit: AuditLog  who wrote what, count-bounded (store/audit.py)

Metadata rules: uid (uuid4), creationTimestamp and generation 1 are set on create; generation grows
only when spec changes; resourceVersion is the spec key's mod_revision; every write records its
correlation id; ``apply --source`` is kept in metadata.source (what prune matches). Deleting an object
with finalizers only sets deletionTimestamp; removing its last finalizer then deletes it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol
from uuid import uuid4

from controller.store import codec, paging
from controller.store._etcd import (
    EtcdKV,
    TlsFiles,
    compare_exists,
    compare_mod,
    op_delete,
    op_get,
    op_put,
    scan_newest,
)
from controller.store.apply import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_TXN_OPS,
    ApplyResult,
    Limits,
    Prefetch,
    apply_objects,
)
from controller.store.audit import AuditLog
from controller.store.errors import ConflictError, NotFoundError, RevisionCompacted, StoreError, UndecodableError
from controller.store.identity import Identities
from controller.store.leases import Leases
from controller.store.paging import Page
from controller.store.watch import Skip, WatchEvent, watch_prefixes
from specs.event import Event, EventMeta, InvolvedObject
from specs.meta import ObjectMeta, Resource, StatusBase

log = logging.getLogger("virtplane.store")

DEFAULT_EVENT_TTL = 3600
FINALIZER_RETRIES = 10


class Selector(Protocol):
    def matches(self, labels: Mapping[str, str]) -> bool: ...


@dataclass(frozen=True)
class Snapshot:
    """Every spec and status of some kinds, read at one etcd revision (``load_all``)."""

    revision: int
    specs: dict[str, builtins.list[Resource]]
    statuses: dict[str, dict[str, tuple[StatusBase, int]]]  # kind -> name -> (status, mod_revision)
    undecodable: builtins.list[str]  # keys whose value does not validate (skipped, logged)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Open with ``await Store.connect([endpoint])``; close with ``await store.close()`` (or
    ``async with``). ``max_txn_ops`` / ``max_request_bytes`` must not exceed the etcd server's
    ``--max-txn-ops`` / ``--max-request-bytes`` (defaults: the embedded etcd's)."""

    def __init__(
        self,
        kv: EtcdKV,
        *,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        event_ttl: int = DEFAULT_EVENT_TTL,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if max_txn_ops < 2:
            raise ValueError("max_txn_ops must be at least 2 (a deletion takes two operations)")
        self.kv = kv
        self.limits = Limits(max_txn_ops, max_request_bytes)
        self.event_ttl = event_ttl
        self.clock = clock
        self.leases = Leases(kv)
        self.identities = Identities(kv)
        self.audit = AuditLog(kv)
        self._lease: tuple[int, float] | None = None  # (lease id, reuse until loop time)
        self._lease_lock = asyncio.Lock()
        self._reported: set[tuple[str, str, int]] = set()  # undecodable (kind, name, mod_revision) reported

    @classmethod
    async def connect(
        cls,
        endpoints: Sequence[str],
        *,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        timeout: float = 10.0,
        event_ttl: int = DEFAULT_EVENT_TTL,
        clock: Callable[[], datetime] = _utcnow,
        tls: TlsFiles | None = None,
    ) -> Store:
        """Connect and check etcd answers (StoreUnavailable if not). ``tls`` for https:// endpoints."""
        kv = EtcdKV(endpoints, timeout=timeout, tls=tls)
        try:
            await kv.revision()
        except BaseException:
            await kv.close()
            raise
        return cls(kv, max_txn_ops=max_txn_ops, max_request_bytes=max_request_bytes,
                   event_ttl=event_ttl, clock=clock)

    async def close(self) -> None:
        await self.kv.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def revision(self) -> int:
        """The current etcd revision."""
        return await self.kv.revision()

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (maintenance; watches re-list when they hit it)."""
        await self.kv.compact(revision)

    # -- specs ------------------------------------------------------------------------------------

    async def get(self, kind: str, name: str) -> Resource | None:
        """The object, None if absent; UndecodableError if its stored value is not a valid object."""
        resp = await self.kv.range(codec.spec_key(kind, name))
        if not resp.kvs:
            return None
        return _decode(kind, name, resp.kvs[0].value, resp.kvs[0].mod_revision)

    async def list(self, kind: str, selector: Selector | None = None) -> tuple[builtins.list[Resource], int]:
        """Objects of ``kind`` (by name) matching ``selector``, and the revision they were read at.
        Stored values that do not decode are skipped, each reported once by a Warning event."""
        kvs, revision = await self.kv.range_prefix(codec.kind_prefix(kind))
        items = []
        prefix_len = len(codec.kind_prefix(kind))
        for kv in kvs:
            try:
                items.append(codec.decode_resource(kv.value, kv.mod_revision))
            except ValueError as exc:
                await self.report_undecodable(kind, bytes(kv.key)[prefix_len:].decode(errors="replace"),
                                              int(kv.mod_revision), exc)
        if selector is not None:
            items = [r for r in items if selector.matches(r.metadata.labels)]
        return items, revision

    async def list_page(
        self, kind: str, *, start: str = "", before: str | None = None, limit: int = 500, revision: int = 0
    ) -> Page:
        """Up to ``limit`` objects of ``kind`` from name ``start`` on (or the last ``limit`` before
        ``before``), with their statuses, all read at ``revision`` (0: now; a later page passes the first
        page's). Decoding runs in a worker thread, so a 100,000-object list in pages never holds the event
        loop for long; an object that does not decode is skipped with an event.
        RevisionCompacted when ``revision`` is older than etcd's history."""
        raw = await paging.read_page(self.kv, kind, limit=limit, start=start, before=before, revision=revision)
        items, bad = await asyncio.to_thread(paging.decode_page, kind, raw)
        for name, mod_revision, exc in bad:
            await self.report_undecodable(kind, name, mod_revision, exc)
        return Page(items, raw.revision, raw.next_start, raw.previous_before)

    async def count(self, kind: str, revision: int) -> int:
        """How many objects of ``kind`` there were at ``revision`` (one count-only read)."""
        return await paging.count(self.kv, kind, revision)

    async def report_undecodable(self, kind: str, name: str, mod_revision: int, exc: Exception) -> None:
        """A Warning event ``Undecodable`` on the object, once per stored version (per Store)."""
        if (kind, name, mod_revision) in self._reported:
            return
        self._reported.add((kind, name, mod_revision))
        log.warning("skipping %s/%s: it does not decode: %s", kind, name, exc)
        message = str(UndecodableError(kind, name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        with contextlib.suppress(StoreError):
            await self.emit_event(Event(type="Warning", reason="Undecodable", message=message,
                                        involvedObject=InvolvedObject(kind=kind, name=name), source="store"))

    async def load_all(self, kinds: Sequence[str]) -> Snapshot:
        """Every spec and status of ``kinds`` at ONE revision (the first read's; later reads are pinned to
        it), so that a watch from ``revision + 1`` misses nothing written meanwhile. Values that do not
        validate are skipped and named in ``undecodable``."""
        while True:
            try:
                return await self._load_at_one_revision(kinds)
            except RevisionCompacted:  # compacted between two reads: read again at a newer revision
                continue

    async def _load_at_one_revision(self, kinds: Sequence[str]) -> Snapshot:
        revision = 0
        specs: dict[str, builtins.list[Resource]] = {}
        statuses: dict[str, dict[str, tuple[StatusBase, int]]] = {}
        bad: builtins.list[str] = []
        for kind in kinds:
            kvs, revision = await self.kv.range_prefix(codec.kind_prefix(kind), revision=revision)
            specs[kind] = []
            for kv in kvs:
                try:
                    specs[kind].append(codec.decode_resource(kv.value, kv.mod_revision))
                except ValueError as exc:
                    bad.append(bytes(kv.key).decode())
                    log.warning("skipping %s: it does not decode: %s", bytes(kv.key).decode(), exc)
        for kind in kinds:
            prefix = codec.kind_prefix(kind, "status")
            kvs, revision = await self.kv.range_prefix(prefix, revision=revision)
            statuses[kind] = {}
            for kv in kvs:
                try:
                    name = bytes(kv.key)[len(prefix):].decode()
                    statuses[kind][name] = (codec.decode_status(kind, kv.value), int(kv.mod_revision))
                except ValueError as exc:
                    bad.append(bytes(kv.key).decode())
                    log.warning("skipping %s: it does not decode: %s", bytes(kv.key).decode(), exc)
        return Snapshot(revision, specs, statuses, bad)

    async def apply(
        self,
        objects: Sequence[Resource],
        *,
        correlation_id: str,
        source: str | None = None,
        dry_run: bool = False,
        prune: bool = False,
        user: str | None = None,
        prefetch: Prefetch | None = None,
    ) -> ApplyResult:
        """Create or update ``objects`` atomically (see ``controller.store.apply``); ``user`` goes into
        metadata.updatedBy beside the correlation id. ``prefetch`` (``Store.prefetch``): kinds read while the
        objects were arriving; if a write planned from them loses its race, the apply is planned again from
        a fresh read (nothing was written: the first transaction is the one that failed)."""
        prefetched = await prefetch.result() if prefetch is not None else None
        try:
            return await apply_objects(
                self.kv, self.limits, objects, correlation_id=correlation_id, source=source,
                dry_run=dry_run, prune=prune, now=self.clock(), user=user, prefetched=prefetched,
            )
        except ConflictError:
            if prefetched is None:
                raise
        return await apply_objects(
            self.kv, self.limits, objects, correlation_id=correlation_id, source=source,
            dry_run=dry_run, prune=prune, now=self.clock(), user=user,
        )

    def prefetch(self) -> Prefetch:
        """A read-ahead of whole kinds for an apply whose objects are still arriving (``Prefetch.want``)."""
        return Prefetch(self.kv)

    async def delete(
        self, kind: str, name: str, *, correlation_id: str, resource_version: int | str | None = None,
        user: str | None = None,
    ) -> Resource | None:
        """Delete, or with finalizers mark deletionTimestamp. Returns the object as marked (or as it
        was when deleted); None if it did not exist. ConflictError on a resource_version mismatch."""
        key = codec.spec_key(kind, name)
        resp = await self.kv.range(key)
        if not resp.kvs:
            if resource_version is not None:
                raise ConflictError(kind, name, int(resource_version), 0)
            return None
        actual = resp.kvs[0].mod_revision
        if resource_version is not None and int(resource_version) != actual:
            raise ConflictError(kind, name, int(resource_version), actual, "resourceVersion precondition")
        try:
            current = codec.decode_resource(resp.kvs[0].value, actual)
        except ValueError:
            # Not a valid object: nothing can tear it down, so it goes at once (spec and status).
            await self._txn(kind, name, actual, [op_delete(key), op_delete(codec.status_key(kind, name))])
            # Not validated: a planted key's name need not be a valid name.
            meta = ObjectMeta.model_construct(name=name, resourceVersion=str(actual))
            return Resource.model_construct(kind=kind, metadata=meta, spec=None)
        if not current.metadata.finalizers:
            await self._txn(kind, name, actual, [op_delete(key), op_delete(codec.status_key(kind, name))])
            return current
        if current.metadata.deletionTimestamp is not None:
            return current
        return await self._put_meta(
            current, actual, deletionTimestamp=self.clock(), correlationId=correlation_id, updatedBy=user
        )

    async def add_finalizer(self, kind: str, name: str, finalizer: str) -> Resource:
        """Add ``finalizer`` (no-op if present). Retries lost compare-and-swaps; spec and generation
        are untouched. StoreError if the object is already being deleted."""
        for _ in range(FINALIZER_RETRIES):
            current, actual = await self._require(kind, name)
            if finalizer in current.metadata.finalizers:
                return current
            if current.metadata.deletionTimestamp is not None:
                raise StoreError(f"{kind}/{name} is being deleted; finalizer {finalizer!r} cannot be added")
            added = (*current.metadata.finalizers, finalizer)
            try:
                return await self._put_meta(current, actual, finalizers=added)
            except ConflictError:
                continue
        raise ConflictError(kind, name, actual, None, f"gave up after {FINALIZER_RETRIES} tries")

    async def remove_finalizer(self, kind: str, name: str, finalizer: str) -> Resource | None:
        """Remove ``finalizer``; if it was the last and deletionTimestamp is set, delete the object
        (spec and status) and return None."""
        for _ in range(FINALIZER_RETRIES):
            current, actual = await self._require(kind, name)
            if finalizer not in current.metadata.finalizers:
                return current
            rest = tuple(f for f in current.metadata.finalizers if f != finalizer)
            try:
                if not rest and current.metadata.deletionTimestamp is not None:
                    ops = [op_delete(codec.spec_key(kind, name)), op_delete(codec.status_key(kind, name))]
                    await self._txn(kind, name, actual, ops)
                    return None
                return await self._put_meta(current, actual, finalizers=rest)
            except ConflictError:
                continue
        raise ConflictError(kind, name, actual, None, f"gave up after {FINALIZER_RETRIES} tries")

    async def _require(self, kind: str, name: str) -> tuple[Resource, int]:
        resp = await self.kv.range(codec.spec_key(kind, name))
        if not resp.kvs:
            raise NotFoundError(kind, name)
        return _decode(kind, name, resp.kvs[0].value, resp.kvs[0].mod_revision), resp.kvs[0].mod_revision

    async def _put_meta(self, current: Resource, expected: int, **changes: Any) -> Resource:
        meta = current.metadata.model_copy(update={**changes, "resourceVersion": None})
        updated = current.model_copy(update={"metadata": meta})
        key = codec.spec_key(current.kind, current.metadata.name)
        revision = await self._txn(current.kind, current.metadata.name, expected,
                                   [op_put(key, codec.encode_resource(updated))])
        stamped = meta.model_copy(update={"resourceVersion": str(revision)})
        return updated.model_copy(update={"metadata": stamped})

    async def _txn(self, kind: str, name: str, expected: int, ops: builtins.list[Any]) -> int:
        key = codec.spec_key(kind, name)
        resp = await self.kv.txn([compare_mod(key, expected)], ops, [op_get(key)])
        if not resp.succeeded:
            kvs = resp.responses[0].response_range.kvs
            raise ConflictError(kind, name, expected, kvs[0].mod_revision if kvs else 0)
        return int(resp.header.revision)

    # -- status -----------------------------------------------------------------------------------

    async def get_status(self, kind: str, name: str) -> tuple[StatusBase | None, int]:
        """(status, mod_revision of the status key); (None, 0) when no status was written yet."""
        resp = await self.kv.range(codec.status_key(kind, name))
        if not resp.kvs:
            return None, 0
        try:
            return codec.decode_status(kind, resp.kvs[0].value), int(resp.kvs[0].mod_revision)
        except ValueError as exc:
            log.warning("status of %s/%s does not decode, ignored: %s", kind, name, exc)
            return None, int(resp.kvs[0].mod_revision)

    async def list_status(self, kind: str) -> dict[str, StatusBase]:
        kvs, _ = await self.kv.range_prefix(codec.kind_prefix(kind, "status"))
        prefix = len(codec.kind_prefix(kind, "status"))
        statuses = {}
        for kv in kvs:
            name = bytes(kv.key)[prefix:].decode(errors="replace")
            try:
                statuses[name] = codec.decode_status(kind, kv.value)
            except ValueError as exc:  # a bad status hides nothing but itself
                log.warning("status of %s/%s does not decode, ignored: %s", kind, name, exc)
        return statuses

    async def put_status(self, kind: str, name: str, status: StatusBase, expected_revision: int) -> int:
        """Write status if its key is still at ``expected_revision`` (0: no status yet) and the object
        exists. Returns the new status revision. Spec, generation and resourceVersion are untouched."""
        skey, okey = codec.status_key(kind, name), codec.spec_key(kind, name)
        resp = await self.kv.txn(
            [compare_mod(skey, expected_revision), compare_exists(okey)],
            [op_put(skey, codec.encode_status(status))],
            [op_get(skey), op_get(okey)],
        )
        if resp.succeeded:
            return int(resp.header.revision)
        if not resp.responses[1].response_range.kvs:
            raise NotFoundError(kind, name)
        kvs = resp.responses[0].response_range.kvs
        raise ConflictError(kind, name, expected_revision, kvs[0].mod_revision if kvs else 0, "status")

    # -- events -----------------------------------------------------------------------------------

    async def emit_event(self, event: Event) -> Event:
        """Store ``event`` under /virtplane/events/<time>-<id> on a shared lease (it expires after
        event_ttl .. 1.1 * event_ttl). Sets metadata name/uid and missing timestamps."""
        return (await self.emit_events([event]))[0]

    async def emit_events(self, events: Sequence[Event]) -> Sequence[Event]:
        """``emit_event`` for many events, in as few transactions as etcd's limits allow."""
        now = self.clock()
        stored: list[Event] = []
        ops: list[tuple[bytes, bytes]] = []
        for event in events:
            uid = str(uuid4())
            name = codec.event_name(now, uid)
            done = event.model_copy(update={
                "metadata": EventMeta(name=name, uid=uid),
                "firstTimestamp": event.firstTimestamp or now,
                "lastTimestamp": event.lastTimestamp or now,
            })
            stored.append(done)
            ops.append(((codec.EVENTS + name).encode(), codec.encode_event(done)))
        per_txn = max(1, self.limits.max_txn_ops)
        for start in range(0, len(ops), per_txn):
            chunk = ops[start:start + per_txn]
            for attempt in (1, 2):
                lease = await self._event_lease(renew=attempt == 2)
                try:
                    await self.kv.txn([], [op_put(key, value, lease) for key, value in chunk])
                    break
                except StoreError as exc:
                    if attempt == 2 or "lease not found" not in str(exc):
                        raise
        return stored

    async def _event_lease(self, *, renew: bool) -> int:
        """One lease per interval (event_ttl / 10) for all events, not one per event."""
        loop = asyncio.get_running_loop()
        async with self._lease_lock:
            if self._lease is None or renew or loop.time() >= self._lease[1]:
                interval = max(1, self.event_ttl // 10)
                lease_id = await self.kv.lease_grant(self.event_ttl + interval)
                self._lease = (lease_id, loop.time() + interval)
            return self._lease[0]

    async def list_events(
        self,
        involved: tuple[str, str] | None = None,
        correlation_id: str | None = None,
        limit: int = 500,
        before: str | None = None,
    ) -> builtins.list[Event]:
        """The newest ``limit`` matching events (older than the event named ``before``), oldest first."""
        def keep(value: bytes) -> Event | None:
            event = codec.decode_event(value)
            obj = event.involvedObject
            if involved is not None and (obj.kind, obj.name) != involved:
                return None
            if correlation_id is not None and event.correlationId != correlation_id:
                return None
            return event

        end = (codec.EVENTS + before).encode() if before else codec.EVENTS[:-1].encode() + b"0"
        return await scan_newest(self.kv, codec.EVENTS.encode(), end, limit, keep)

    # -- watch ------------------------------------------------------------------------------------

    def watch_objects(
        self,
        start_revision: int,
        *,
        kinds: Sequence[str],
        parts: Sequence[str] = ("spec", "status"),
        known: Mapping[tuple[str, str], int] | None = None,
        skip: Skip | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes to specs and/or statuses of ``kinds`` from ``start_revision`` on (see
        ``controller.store.watch``). ``known``: (kind, name) -> resourceVersion of the specs the consumer
        listed, so that a re-list after compaction also reports those deleted meanwhile. ``skip``: PUTs not
        to decode (the consumer's own writes)."""
        prefixes = [codec.kind_prefix(kind, part).decode() for part in ("spec", "status") if part in parts
                    for kind in kinds]
        keys = {codec.spec_key(k, n).decode(): rev for (k, n), rev in known.items()} if known is not None else None
        return watch_prefixes(self.kv, prefixes, start_revision, known=keys, skip=skip)

    def watch_events(self, start_revision: int) -> AsyncGenerator[WatchEvent, None]:
        """Events stored from ``start_revision`` on."""
        return watch_prefixes(self.kv, [codec.EVENTS], start_revision)

    def watch(
        self, prefixes: Sequence[str], start_revision: int, *, known: Mapping[str, int] | None = None
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes under raw key ``prefixes`` (store-internal and tests; see ``controller.store.watch``)."""
        return watch_prefixes(self.kv, prefixes, start_revision, known=known)



def _decode(kind: str, name: str, value: bytes, mod_revision: int) -> Resource:
    try:
        return codec.decode_resource(value, mod_revision)
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UndecodableError(kind, name, first) from exc
