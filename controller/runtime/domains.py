"""The domains of one host as this controller knows them, kept current by events instead of polling.

Four sources feed it, and nothing else asks libvirt for a domain's XML:

- **Our own actions.** A reconcile that defines or starts a domain records what libvirt answered
  (:meth:`HostDomains.put`), and says beforehand which lifecycle events that action will cause
  (:meth:`expect`); those events are then swallowed (:meth:`consume`) instead of queueing the VM a second
  time — the "expectations" of controller-runtime's ReplicaSet controller.
- **Events we did not cause** (``virsh destroy``, a crash, a guest shutdown, a device removed) mark the
  domain dirty (:meth:`mark_dirty`): the next reconcile of its VM, or the next listing, fetches its XML.
- **One state listing per host per interval** (``getAllDomainStats`` + the transient ones: two calls,
  whatever the number of domains) catches what an event did not say: a domain that appeared, vanished or
  changed state (:meth:`apply_listing`). XML is fetched only for those, and for dirty ones.
- **A full listing** (every domain's XML) after each (re)connection — events are lost while disconnected —
  and at a long interval as the last safety net for a definition edited while events were lost.

Listings run in a worker thread while reconciles go on: an entry updated after a listing began
(:meth:`stamp`) is newer than the listing and is kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from controller.adapters.libvirt.observe import DomainEvent, DomainListing, DomainSummary
from reconcilers.domain import ObservedDomain

EXPECTATION_TTL = 60.0  # seconds an expected event is waited for (an action whose event never came)


def summary_of(d: ObservedDomain) -> DomainSummary:
    return DomainSummary(d.state, d.reason, d.persistent)


class DomainIndex:
    """Domain name -> the hosts whose domain caches have held it: where to look for a domain without asking
    every host (a VM's domain is looked up several times per reconcile). A superset: ``HostRegistry.locate``
    checks each host's own cache and prunes what it no longer holds. Every addition to a host's cache is
    added here; nothing else removes, so a host that holds a domain is never missing."""

    def __init__(self) -> None:
        self.hosts: dict[str, set[str]] = {}

    def add(self, domain: str, host: str) -> None:
        found = self.hosts.get(domain)
        if found is None:
            self.hosts[domain] = {host}
        else:
            found.add(host)


@dataclass
class HostDomains(Mapping[str, ObservedDomain]):
    """A mapping name -> ObservedDomain, plus what is needed to keep it current without polling."""

    entries: dict[str, ObservedDomain] = field(default_factory=dict)
    host: str = ""
    index: DomainIndex | None = None  # the registry's: every domain put here is added to it
    _seq: int = 0
    _touched: dict[str, int] = field(default_factory=dict)  # name -> seq of its last local update
    _dirty: dict[str, int] = field(default_factory=dict)  # name -> seq at which an event said it changed
    _expected: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (domain, event) -> deadlines
    listed_generation: int = -1  # the connection generation of the last full listing
    full_listed_at: float = 0.0  # monotonic time of the last full listing

    # -- Mapping
    def __getitem__(self, name: str) -> ObservedDomain:
        return self.entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    # Mapping's own get/in go through __getitem__ and a KeyError per miss: a VM's domain is looked up on
    # every host of the registry (it is on one), so misses are the common case.
    def get(self, name: str, default: ObservedDomain | None = None) -> ObservedDomain | None:  # type: ignore[override]
        return self.entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    # -- local updates (our actions, a reconcile's fresh observation)
    def stamp(self) -> int:
        """A marker: updates after it are newer than a listing or observation that starts now."""
        self._seq += 1
        return self._seq

    def put(self, domain: ObservedDomain, *, since: int | None = None) -> None:
        """Record a fresh observation; ``since``: the stamp taken before it was made (clears dirtiness
        older than that)."""
        self.entries[domain.name] = domain
        if self.index is not None:
            self.index.add(domain.name, self.host)
        self._touched[domain.name] = self.stamp()
        if since is not None:
            self.clean(domain.name, since)

    def drop(self, name: str, *, since: int | None = None) -> None:
        self.entries.pop(name, None)
        self._touched[name] = self.stamp()
        if since is not None:
            self.clean(name, since)

    def clean(self, name: str, since: int) -> None:
        if self._dirty.get(name, since + 1) <= since:
            del self._dirty[name]

    # -- events
    def mark_dirty(self, name: str) -> None:
        self._dirty[name] = self.stamp()

    def dirty(self, name: str) -> bool:
        return name in self._dirty

    @property
    def dirty_names(self) -> frozenset[str]:
        return frozenset(self._dirty)

    def expect(self, domain: str, event: str, now: float) -> None:
        """Our next action on ``domain`` will cause ``event`` (call before the action)."""
        self._expected.setdefault((domain, event), []).append(now + EXPECTATION_TTL)

    def unexpect(self, domain: str, event: str) -> None:
        """The action failed: its event will not come."""
        deadlines = self._expected.get((domain, event))
        if deadlines:
            deadlines.pop()
            if not deadlines:
                del self._expected[(domain, event)]

    def consume(self, event: DomainEvent, now: float) -> bool:
        """True when ``event`` was expected (caused by our own action, already recorded): drop it."""
        key = (event.domain, event.event)
        deadlines = self._expected.get(key)
        while deadlines and deadlines[0] < now:
            deadlines.pop(0)  # expired: that event never came
        if not deadlines:
            self._expected.pop(key, None)
            return False
        deadlines.pop(0)
        if not deadlines:
            del self._expected[key]
        return True

    @property
    def expected_count(self) -> int:
        return sum(len(v) for v in self._expected.values())

    # -- listings
    def needs_xml(self, full: bool) -> dict[str, DomainSummary | None]:
        """A snapshot for a listing's fetch predicate: name -> summary, None when the XML must be fetched."""
        if full:
            return {}
        return {n: (None if n in self._dirty else summary_of(d)) for n, d in self.entries.items()}

    def apply_listing(self, listing: DomainListing, since: int) -> set[str]:
        """Merge a listing that began at stamp ``since``; returns the names whose observation changed (new,
        gone, other state or definition). Entries updated locally after ``since`` are kept as they are."""
        changed: set[str] = set()
        for name in list(self.entries):
            if name not in listing.states and self._touched.get(name, 0) <= since:
                del self.entries[name]
                self._dirty.pop(name, None)
                changed.add(name)
        for name, summary in listing.states.items():
            if self._touched.get(name, 0) > since:
                continue
            fresh = listing.observed.get(name)
            current = self.entries.get(name)
            if fresh is not None:
                if current != fresh:
                    changed.add(name)
                self.entries[name] = fresh
                if self.index is not None:
                    self.index.add(name, self.host)
                self.clean(name, since)
            elif current is None or summary_of(current) != summary:
                changed.add(name)  # the fetch predicate asked for no XML, yet it differs: look next time
                self._dirty[name] = self.stamp()
        return changed
