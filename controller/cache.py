"""An informer: every spec and status in memory, kept current by one resuming store watch.

Controllers read from here (cheap, consistent with what the watch has delivered) and only enqueue keys
on change; they never reason from the event itself. Status revisions are tracked so status writes are
compare-and-swap against what we last saw.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from controller.store import Store, codec
from specs.kinds import KINDS
from specs.meta import Resource, StatusBase

log = logging.getLogger("virtplane.cache")

Key = tuple[str, str]  # (kind, name)
R = TypeVar("R", bound=Resource)


class Cache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.specs: dict[str, dict[str, Resource]] = {kind: {} for kind in KINDS}
        self.status: dict[str, dict[str, StatusBase]] = {kind: {} for kind in KINDS}
        self.status_rev: dict[Key, int] = {}
        self.revision = 0
        self.loaded = False

    async def load(self) -> None:
        """List everything once; ``watch`` continues from here."""
        revision = 0
        for kind in KINDS:
            items, rev = await self.store.list(kind)
            revision = max(revision, rev)
            self.specs[kind] = {r.metadata.name: r for r in items}
        for kind in KINDS:
            kvs, rev = await self.store.kv.range_prefix(f"/virtplane/status/{kind}/".encode())
            revision = max(revision, rev)
            for kv in kvs:
                name = bytes(kv.key).decode().rsplit("/", 1)[1]
                with contextlib.suppress(ValueError):
                    self.status[kind][name] = codec.decode_status(kind, kv.value)
                    self.status_rev[(kind, name)] = int(kv.mod_revision)
        self.revision = revision
        self.loaded = True

    async def watch(self, on_change: Callable[[str, str, str], None]) -> None:
        """Apply every change to the cache, then call ``on_change(kind, name, part)``. Runs forever."""
        prefixes = ["/virtplane/specs/", "/virtplane/status/"]
        known = {
            f"/virtplane/specs/{k}/{n}": int(r.metadata.resourceVersion or 0)
            for k, items in self.specs.items()
            for n, r in items.items()
        }
        async for event in self.store.watch(prefixes, self.revision + 1, known=known):
            self.revision = max(self.revision, event.mod_revision)
            if event.kind not in self.specs:
                continue
            if event.part == "spec":
                if event.type == "DELETE":
                    self.specs[event.kind].pop(event.name, None)
                elif isinstance(event.value, Resource):
                    self.specs[event.kind][event.name] = event.value
            elif event.part == "status":
                if event.type == "DELETE":
                    self.status[event.kind].pop(event.name, None)
                    self.status_rev.pop((event.kind, event.name), None)
                elif isinstance(event.value, StatusBase):
                    self.status[event.kind][event.name] = event.value
                    self.status_rev[(event.kind, event.name)] = event.mod_revision
            on_change(event.kind, event.name, event.part)

    def get(self, kind: str, name: str, model: type[R]) -> R | None:
        obj = self.specs[kind].get(name)
        return obj if isinstance(obj, model) else None

    def all(self, kind: str, model: type[R]) -> list[R]:
        return [o for o in self.specs[kind].values() if isinstance(o, model)]

    def note_status(self, kind: str, name: str, status: StatusBase, revision: int) -> None:
        """Record our own write at once, so the next reconcile compares against it (expectations)."""
        self.status[kind][name] = status
        self.status_rev[(kind, name)] = max(revision, self.status_rev.get((kind, name), 0))
