"""A resuming watch over store prefixes.

``watch_prefixes(kv, prefixes, start_revision)`` yields every change under the prefixes from
``start_revision`` on, in revision order, exactly once:

- one etcd watch over the smallest key range that covers all prefixes (so one revision cursor and
  a total order), filtered to the prefixes here;
- after a dropped stream or an etcd restart it reconnects with exponential backoff (0.05 s → 2 s)
  and resumes from the last delivered revision + 1; progress notifications move the cursor while
  idle;
- when the resume revision was compacted away, it re-lists the prefixes at one revision and emits
  synthetic events (``WatchEvent.synthetic``): a PUT for each key newer than what this watch already
  delivered, a DELETE for each key it delivered that is gone; then it watches from list revision + 1.
  Keys with mod_revision < start_revision count as already known to the consumer (it listed them);
  pass ``known`` (key → mod_revision from that list) to also get DELETEs for those.

The generator owns one gRPC stream and no tasks; closing it (``aclose()``, leaving ``async with
contextlib.aclosing(...)``, or cancelling the consuming task) cancels the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from aetcd import rpc
from pydantic import BaseModel, ValidationError

from controller.store import codec
from controller.store._etcd import EtcdKV, classify, prefix_end
from controller.store.errors import RevisionCompacted, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class WatchEvent:
    """One change. ``value`` is the decoded object (Resource with resourceVersion / status model /
    Event) for a PUT, None for a DELETE (and for a PUT whose value no longer validates; logged)."""

    type: Literal["PUT", "DELETE"]
    key: str
    kind: str
    name: str
    part: codec.Part
    value: BaseModel | None
    mod_revision: int
    synthetic: bool = False


class _Compacted(Exception):
    pass


Skip = Callable[[codec.Part, str, str, int], bool]  # (part, kind, name, mod_revision) -> no need to decode


def _event(
    type_: Literal["PUT", "DELETE"], key: str, value: bytes, revision: int, synthetic: bool,
    skip: Skip | None = None,
) -> WatchEvent:
    parsed = codec.parse_key(key)
    part, kind, name = parsed if parsed is not None else ("spec", "", key)
    decoded: BaseModel | None = None
    if type_ == "PUT" and (skip is None or not skip(part, kind, name, revision)):
        try:
            decoded = codec.decode_part(part, kind, value, revision)
        except (ValueError, ValidationError) as exc:
            log.warning("watch: cannot decode %s at revision %d: %s", key, revision, exc)
    return WatchEvent(type_, key, kind, name, part, decoded, revision, synthetic)


class _Cursor:
    def __init__(self, prefixes: Sequence[str], start_revision: int, known: Mapping[str, int] | None) -> None:
        if not prefixes:
            raise ValueError("watch needs at least one prefix")
        if start_revision < 1:
            raise ValueError(f"start_revision must be >= 1, got {start_revision}")
        self.prefixes = tuple(prefixes)
        self.start = start_revision
        self.revision = start_revision - 1  # everything <= this was delivered
        self.delivered: dict[str, int] = dict(known or {})
        self.assume_known = known is None

    def covers(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    def record(self, event: WatchEvent) -> None:
        if event.type == "PUT":
            self.delivered[event.key] = event.mod_revision
        else:
            self.delivered.pop(event.key, None)
        self.revision = max(self.revision, event.mod_revision)


async def watch_prefixes(
    kv: EtcdKV,
    prefixes: Sequence[str],
    start_revision: int,
    *,
    known: Mapping[str, int] | None = None,
    skip: Skip | None = None,
) -> AsyncGenerator[WatchEvent, None]:
    """``skip``: PUTs it says True for are delivered undecoded (``value`` None) — the consumer's own writes,
    which it already holds."""
    cursor = _Cursor(prefixes, start_revision, known)
    encoded = [p.encode() for p in cursor.prefixes]
    key, end = min(encoded), max(prefix_end(p) for p in encoded)
    delay = BACKOFF_INITIAL
    while True:
        try:
            async with contextlib.aclosing(_stream(kv, cursor, key, end, skip)) as stream:
                async for event in stream:
                    delay = BACKOFF_INITIAL
                    yield event
        except _Compacted:
            log.info("watch from revision %d: history compacted; re-listing", cursor.revision + 1)
            try:
                events, revision = await _relist(kv, cursor)
            except StoreUnavailable as exc:
                log.info("watch: re-list failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            for event in events:
                cursor.record(event)
                yield event
            cursor.revision = max(cursor.revision, revision)
        except StoreUnavailable as exc:
            log.info("watch: etcd unavailable (%s); resume from %d in %.2fs", exc, cursor.revision + 1, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)


async def _stream(
    kv: EtcdKV, cursor: _Cursor, key: bytes, end: bytes, skip: Skip | None = None
) -> AsyncGenerator[WatchEvent, None]:
    """One watch stream from cursor.revision + 1 until it fails."""
    floor = cursor.revision  # etcd starts at floor + 1; anything at or below would be a repeat
    call = kv.open_watch()
    try:
        create = rpc.WatchCreateRequest(
            key=key, range_end=end, start_revision=cursor.revision + 1, progress_notify=True
        )
        await call.write(rpc.WatchRequest(create_request=create))
        while True:
            resp: Any = await call.read()
            if resp is grpc.aio.EOF:
                raise StoreUnavailable("etcd closed the watch stream")
            if resp.compact_revision:
                raise _Compacted()
            if resp.canceled:
                raise StoreError(f"etcd cancelled the watch: {resp.cancel_reason or 'no reason given'}")
            if not resp.events:
                if not resp.created:  # progress notification: nothing up to this revision
                    cursor.revision = max(cursor.revision, resp.header.revision)
                continue
            for ev in resp.events:
                name = ev.kv.key.decode()
                if ev.kv.mod_revision <= floor or not cursor.covers(name):
                    continue
                kind: Literal["PUT", "DELETE"] = "DELETE" if ev.type == rpc.Event.DELETE else "PUT"
                event = _event(kind, name, ev.kv.value, ev.kv.mod_revision, False, skip)
                cursor.record(event)
                yield event
    except grpc.aio.AioRpcError as exc:
        raise classify(exc, kv.target) from exc
    except asyncio.InvalidStateError as exc:  # the call failed before our write reached it
        raise StoreUnavailable(f"watch stream to {kv.target} ended at once: {exc}") from exc
    finally:
        await _finish(call)


async def _finish(call: Any) -> None:
    """Cancel the stream and wait until gRPC has completed it, so that no completion is left to
    arrive later (on an event loop that may be closed by then)."""
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, grpc.aio.AioRpcError):
        await asyncio.wait_for(call.code(), 5)


async def _relist(kv: EtcdKV, cursor: _Cursor) -> tuple[list[WatchEvent], int]:
    """Synthetic events that bring the consumer from what it was given to the current state."""
    revision = 0
    kvs: list[Any] = []
    for prefix in cursor.prefixes:
        try:
            got, revision = await kv.range_prefix(prefix.encode(), revision=revision)
        except RevisionCompacted:  # compacted between two pages: start over
            return await _relist(kv, cursor)
        kvs.extend(got)
    events: list[WatchEvent] = []
    present: set[str] = set()
    for item in sorted(kvs, key=lambda k: (k.mod_revision, k.key)):
        name = item.key.decode()
        present.add(name)
        seen = cursor.delivered.get(name)
        if seen is not None and seen >= item.mod_revision:
            continue
        if seen is None and cursor.assume_known and item.mod_revision < cursor.start:
            cursor.delivered[name] = item.mod_revision
            continue
        events.append(_event("PUT", name, item.value, item.mod_revision, True))
    for name in sorted(set(cursor.delivered) - present):
        events.append(_event("DELETE", name, b"", revision, True))
    return events, revision
