"""An informer: every spec and status in memory, kept current by one resuming store watch.

``load`` reads everything at ONE etcd revision and ``watch`` continues from that revision + 1, so no write
falls between the two. Controllers read from here (cheap, consistent with what the watch has delivered) and
only enqueue keys on change; they never reason from the event itself. Status revisions are tracked so
status writes are compare-and-swap against what we last saw, and our own writes, once noted
(``note_status``; the writer reports them itself), are not reported again when the watch delivers them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from controller.runtime.registry import Part
from controller.store import Store
from specs.meta import Resource, StatusBase

log = logging.getLogger("virtplane.cache")

Key = tuple[str, str]  # (kind, name)
R = TypeVar("R", bound=Resource)
# (kind, name, part, value before, value after); a value is None when absent.
OnChange = Callable[[str, str, Part, Any, Any], None]


class Cache:
    def __init__(self, store: Store, kinds: Sequence[str]) -> None:
        self.store = store
        self.kinds = tuple(kinds)
        self.specs: dict[str, dict[str, Resource]] = {kind: {} for kind in self.kinds}
        self.status: dict[str, dict[str, StatusBase]] = {kind: {} for kind in self.kinds}
        self.status_rev: dict[Key, int] = {}
        self.revision = 0
        self.loaded = False
        # kind -> a number that changes whenever a spec or status of the kind does (what is derived from
        # all objects of a kind, such as a cluster's hosts, is current while it holds)
        self.generations: dict[str, int] = dict.fromkeys(self.kinds, 0)

    async def load(self) -> None:
        """List everything at one revision; ``watch`` continues from the next one."""
        snapshot = await self.store.load_all(self.kinds)
        for kind in self.kinds:
            self.specs[kind] = {r.metadata.name: r for r in snapshot.specs.get(kind, ())}
            self.status[kind] = {}
            for name, (status, rev) in snapshot.statuses.get(kind, {}).items():
                self.status[kind][name] = status
                self.status_rev[(kind, name)] = rev
        self.revision = snapshot.revision
        self.loaded = True
        for kind in self.kinds:
            self.generations[kind] += 1

    async def watch(self, on_change: OnChange) -> None:
        """Apply every change to the cache, then call ``on_change``. Runs forever."""
        known = {(k, n): int(r.metadata.resourceVersion or 0)
                 for k, items in self.specs.items() for n, r in items.items()}
        def ours(part: str, kind: str, name: str, revision: int) -> bool:  # our own status write: not decoded
            return part == "status" and revision <= self.status_rev.get((kind, name), 0)

        async for event in self.store.watch_objects(self.revision + 1, kinds=self.kinds, known=known, skip=ours):
            self.revision = max(self.revision, event.mod_revision)
            if event.kind not in self.specs:
                continue
            self.generations[event.kind] += 1
            if event.part == "spec":
                before: Any = self.specs[event.kind].get(event.name)
                if event.type == "DELETE":
                    self.specs[event.kind].pop(event.name, None)
                elif isinstance(event.value, Resource):
                    self.specs[event.kind][event.name] = event.value
                on_change(event.kind, event.name, "spec", before, self.specs[event.kind].get(event.name))
            elif event.part == "status":
                key = (event.kind, event.name)
                if event.type == "PUT" and event.mod_revision <= self.status_rev.get(key, 0):
                    continue  # our own write, already noted (and reported) by note_status
                before = self.status[event.kind].get(event.name)
                if event.type == "DELETE":
                    self.status[event.kind].pop(event.name, None)
                    self.status_rev.pop(key, None)
                elif isinstance(event.value, StatusBase):
                    self.status[event.kind][event.name] = event.value
                    self.status_rev[key] = event.mod_revision
                on_change(event.kind, event.name, "status", before, self.status[event.kind].get(event.name))

    def get(self, kind: str, name: str, model: type[R]) -> R | None:
        obj = self.specs[kind].get(name)
        return obj if isinstance(obj, model) else None

    def all(self, kind: str, model: type[R]) -> list[R]:
        return [o for o in self.specs[kind].values() if isinstance(o, model)]

    def note_status(self, kind: str, name: str, status: StatusBase, revision: int) -> None:
        """Record our own write at once, so the next reconcile compares against it (expectations)."""
        self.generations[kind] = self.generations.get(kind, 0) + 1
        self.status[kind][name] = status
        self.status_rev[(kind, name)] = max(revision, self.status_rev.get((kind, name), 0))
