"""One page of a kind's objects, read from etcd without reading the others (``Store.list_page``).

Objects are ordered by name (etcd orders keys). Without a selector a page is one range read of ``limit``
keys after (or, going back, before) a name, a count-only read for the total, and one range read of the
statuses between the page's first and last names — the cost does not grow with the kind's size, but for the
count. With a selector every object must be looked at (labels are in the values): all are decoded and
filtered, and only the page is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controller.store import codec
from controller.store._etcd import EtcdKV, prefix_end
from specs.meta import Resource, StatusBase


@dataclass(frozen=True)
class Page:
    items: list[Resource]
    statuses: dict[str, StatusBase] = field(default_factory=dict)
    revision: int = 0
    total: int = 0  # objects of the kind (matching the selector)
    more_after: bool = False  # objects after the last one of this page
    more_before: bool = False  # objects before the first one


async def list_page(kv: EtcdKV, kind: str, *, limit: int, after: str | None = None, before: str | None = None,
                    matches: Callable[[Mapping[str, str]], bool] | None = None) -> Page:
    prefix = codec.kind_prefix(kind)
    end = prefix_end(prefix)
    if matches is not None:
        return await _filtered(kv, kind, limit, after, before, matches)
    if before is not None:
        resp = await kv.range(prefix, codec.spec_key(kind, before), limit=limit, descend=True)
        kvs = list(reversed(resp.kvs))
        more_before, more_after = bool(resp.more), True
    else:
        start = codec.spec_key(kind, after) + b"\0" if after is not None else prefix
        resp = await kv.range(start, end, limit=limit)
        kvs = list(resp.kvs)
        more_before, more_after = after is not None, bool(resp.more)
    revision = int(resp.header.revision)
    items = [codec.decode_resource(item.value, item.mod_revision) for item in kvs]
    total = int((await kv.range(prefix, end, revision=revision, count_only=True)).count)
    statuses = await _statuses(kv, kind, items, revision)
    return Page(items, statuses, revision, total, more_after, more_before and bool(items))


T = TypeVar("T")


def slice_by_name(items: list[T], limit: int, after: str | None, before: str | None,
                  name: Callable[[T], str] = lambda r: r.metadata.name,  # type: ignore[attr-defined]
                  ) -> tuple[list[T], bool, bool]:
    """The page of ``items`` (sorted by name) after or before a name: (page, more before, more after)."""
    if before is not None:
        ahead = [r for r in items if name(r) < before]
        return ahead[-limit:], len(ahead) > limit, True
    rest = [r for r in items if after is None or name(r) > after]
    return rest[:limit], len(rest) < len(items), len(rest) > limit


async def _filtered(kv: EtcdKV, kind: str, limit: int, after: str | None, before: str | None,
                    matches: Callable[[Mapping[str, str]], bool]) -> Page:
    """Labels are matched on the stored JSON; only the page's objects are validated into models."""
    kvs, revision = await kv.range_prefix(codec.kind_prefix(kind))
    prefix = len(codec.kind_prefix(kind))
    every: list[tuple[str, Any]] = []
    for item in kvs:
        raw = codec.decode_raw(item.value)
        if matches((raw.get("metadata") or {}).get("labels") or {}):
            every.append((bytes(item.key)[prefix:].decode(), (raw, item.mod_revision)))
    chosen, more_before, more_after = slice_by_name(every, limit, after, before, name=lambda e: e[0])
    items = [codec.resource_from_raw(raw, rev) for _, (raw, rev) in chosen]
    return Page(items, await _statuses(kv, kind, items, revision), revision, len(every), more_after,
                more_before)


async def _statuses(kv: EtcdKV, kind: str, items: list[Resource], revision: int) -> dict[str, StatusBase]:
    if not items:
        return {}
    prefix = codec.kind_prefix(kind, "status")
    first, last = codec.status_key(kind, items[0].metadata.name), codec.status_key(kind, items[-1].metadata.name)
    resp = await kv.range(first, last + b"\0", revision=revision)
    wanted = {r.metadata.name for r in items}
    found = {bytes(i.key)[len(prefix):].decode(): i.value for i in resp.kvs}
    return {name: codec.decode_status(kind, value) for name, value in found.items() if name in wanted}
