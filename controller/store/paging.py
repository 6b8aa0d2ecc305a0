"""One page of a kind's objects, read from etcd without reading the others (``Store.list_page``).

Objects are ordered by name (etcd orders keys). A page is one range read of ``limit`` keys from a name on
(or, going back, before a name), and one range read of the statuses between the page's first and last
names, both at one revision: the first page's, which later pages pass back, so that a list read in pages
is one consistent snapshot (``RevisionCompacted`` once etcd has compacted it away). The cost of a page does
not grow with the kind's size. Decoding is left to the caller (``Store.list_page`` does it in a worker
thread); ``count`` is one count-only read.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from controller.store import codec
from controller.store._etcd import EtcdKV, prefix_end
from specs.meta import Resource, StatusBase


@dataclass(frozen=True)
class RawPage:
    kvs: list[Any]  # the objects' key-values, by name
    statuses: dict[str, bytes]  # their stored statuses, by name
    revision: int
    next_start: str | None  # where the page after this one starts (None: this is the last)
    previous_before: str | None  # the page before this one ends before this name (None: this is the first)


@dataclass(frozen=True)
class Page:
    """One page of a list: (object, its status or None) by name, the revision every page is read at, where
    the next page starts and where the previous one ends (None: there is none)."""

    items: list[tuple[Resource, StatusBase | None]]
    revision: int
    next_start: str | None
    previous_before: str | None = None


async def read_page(kv: EtcdKV, kind: str, *, limit: int, start: str = "", before: str | None = None,
                    revision: int = 0) -> RawPage:
    """Up to ``limit`` objects from name ``start`` on (inclusive), or the last ``limit`` before ``before``."""
    prefix = codec.kind_prefix(kind)
    if before is not None:
        resp = await kv.range(prefix, prefix + before.encode(), revision=revision, limit=limit, descend=True)
        kvs = list(reversed(resp.kvs))
        next_start: str | None = before
        earlier = bool(resp.more)
    else:
        resp = await kv.range(prefix + start.encode(), prefix_end(prefix), revision=revision, limit=limit)
        kvs = list(resp.kvs)
        next_start = _name(kvs[-1], len(prefix)) + "\0" if resp.more and kvs else None
        earlier = start != ""
    revision = revision or int(resp.header.revision)
    statuses: dict[str, bytes] = {}
    if kvs:
        sprefix = codec.kind_prefix(kind, "status")
        first, last = _name(kvs[0], len(prefix)), _name(kvs[-1], len(prefix))
        sresp = await kv.range(sprefix + first.encode(), sprefix + last.encode() + b"\0", revision=revision)
        statuses = {_name(item, len(sprefix)): item.value for item in sresp.kvs}
    previous_before = _name(kvs[0], len(prefix)) if earlier and kvs else None
    return RawPage(kvs, statuses, revision, next_start, previous_before)


async def count(kv: EtcdKV, kind: str, revision: int) -> int:
    prefix = codec.kind_prefix(kind)
    return int((await kv.range(prefix, prefix_end(prefix), revision=revision, count_only=True)).count)


def decode_page(
    kind: str, raw: RawPage
) -> tuple[list[tuple[Resource, StatusBase | None]], list[tuple[str, int, Exception]]]:
    """The page's objects and statuses decoded (CPU-bound: run it in a worker thread), and the objects that
    do not decode as (name, mod_revision, error): skipped, never failing the page."""
    prefix_len = len(codec.kind_prefix(kind))
    items: list[tuple[Resource, StatusBase | None]] = []
    bad: list[tuple[str, int, Exception]] = []
    for item in raw.kvs:
        name = _name(item, prefix_len)
        try:
            resource = codec.decode_resource(item.value, item.mod_revision)
        except ValueError as exc:
            bad.append((name, int(item.mod_revision), exc))
            continue
        status = None
        if name in raw.statuses:
            with contextlib.suppress(ValueError):  # a bad status hides nothing but itself
                status = codec.decode_status(kind, raw.statuses[name])
        items.append((resource, status))
    return items, bad


def _name(item: Any, prefix_len: int) -> str:
    return bytes(item.key)[prefix_len:].decode(errors="replace")
