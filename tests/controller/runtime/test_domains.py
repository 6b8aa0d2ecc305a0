"""HostDomains: expectations, dirtiness, and merging a listing that raced with local updates."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from controller.adapters.libvirt.observe import DomainEvent, DomainListing, DomainSummary
from controller.runtime.domains import EXPECTATION_TTL, HostDomains, summary_of
from reconcilers.domain import DomainName, DomainUUID, HostName, ObservedDomain

H = HostName("h1")


def dom(name: str, state: str = "running") -> ObservedDomain:
    return ObservedDomain(host=H, name=DomainName(name), uuid=DomainUUID(f"uuid-{name}"), state=state,  # type: ignore[arg-type]
                          reason="booted" if state == "running" else "unknown", persistent=True, config=None,
                          live=None, owner=None)


def event(name: str, what: str) -> DomainEvent:
    return DomainEvent(H, DomainName(name), what, "")


def test_an_expected_event_is_swallowed_once_and_expires() -> None:
    domains = HostDomains()
    domains.expect("a", "started", now=100.0)
    assert domains.consume(event("a", "started"), now=100.5)
    assert not domains.consume(event("a", "started"), now=100.6)  # a second one is news
    domains.expect("a", "defined", now=100.0)
    assert not domains.consume(event("a", "defined"), now=100.0 + EXPECTATION_TTL + 1)  # never came in time
    assert domains.expected_count == 0


def test_a_failed_action_withdraws_its_expectation() -> None:
    domains = HostDomains()
    domains.expect("a", "started", now=0.0)
    domains.unexpect("a", "started")
    assert not domains.consume(event("a", "started"), now=1.0)


def test_dirtiness_is_cleared_only_by_an_observation_that_started_after_it() -> None:
    domains = HostDomains()
    before = domains.stamp()
    domains.mark_dirty("a")
    domains.put(dom("a"), since=before)  # that observation began before the event: still dirty
    assert domains.dirty("a")
    since = domains.stamp()
    domains.put(dom("a"), since=since)
    assert not domains.dirty("a")


def test_a_listing_adds_removes_and_reports_what_changed() -> None:
    domains = HostDomains()
    domains.put(dom("kept"))
    domains.put(dom("gone"))
    domains.put(dom("stopped"))
    since = domains.stamp()
    listing = DomainListing(
        states={DomainName("kept"): summary_of(dom("kept")),
                DomainName("stopped"): DomainSummary("shutoff", "destroyed", True),
                DomainName("new"): summary_of(dom("new"))},
        observed={DomainName("new"): dom("new")},
    )
    changed = domains.apply_listing(listing, since)
    assert changed == {"gone", "stopped", "new"}
    assert set(domains) == {"kept", "stopped", "new"}
    assert domains.dirty("stopped")  # its state moved without its XML: fetched next time
    assert domains.needs_xml(full=False)["stopped"] is None
    assert domains.needs_xml(full=False)["kept"] == summary_of(dom("kept"))


def test_a_listing_older_than_a_local_update_does_not_undo_it() -> None:
    domains = HostDomains()
    since = domains.stamp()  # the listing starts...
    domains.put(dom("fresh"))  # ... a reconcile defines and starts a domain meanwhile ...
    domains.put(dom("old", "running"))
    stale = DomainListing(states={DomainName("old"): DomainSummary("shutoff", "unknown", True)},
                          observed={DomainName("old"): replace(dom("old"), state="shutoff")})
    changed = domains.apply_listing(stale, since)  # ... and the listing saw neither
    assert changed == set()
    assert domains["fresh"].state == "running" and domains["old"].state == "running"


def test_locate_finds_a_domain_through_the_index_wherever_a_cache_holds_it(tmp_path: Path) -> None:
    """HostRegistry.locate asks only the hosts the index names (not every host) and must still find every
    host whose cache holds the domain: put, a listing, a replaced runtime; a host that dropped it, or a
    host not ready, is not reported."""
    from controller.runtime.hosts import HostRegistry, HostRuntime
    from reconcilers.domain import ObservedHost

    registry = HostRegistry(tmp_path)

    def add(name: str, *, ready: bool = True) -> HostRuntime:
        runtime = HostRuntime(HostName(name), "test:///default", conn=None,  # type: ignore[arg-type]
                              observed=ObservedHost(HostName(name), "test:///default", ready),
                              domains=HostDomains(host=name, index=registry.index))
        registry.hosts[HostName(name)] = runtime
        return runtime

    a, b, c = add("a"), add("b"), add("c", ready=False)
    for n in range(20):
        add(f"other-{n}")
    a.domains.put(dom("vm"))
    assert set(registry.locate("vm")) == {"a"}
    since = b.domains.stamp()
    b.domains.apply_listing(DomainListing(states={DomainName("vm"): summary_of(dom("vm"))},
                                          observed={DomainName("vm"): dom("vm")}), since)
    assert list(registry.locate("vm")) == ["a", "b"]  # the registry's order, as before the index
    c.domains.put(dom("vm"))
    assert "c" not in registry.locate("vm")  # not ready
    a.domains.drop("vm")
    assert set(registry.locate("vm")) == {"b"}
    assert registry.index.hosts["vm"] == {"b", "c"}  # a pruned
    replaced = add("b")  # a new runtime for b (its URI changed): nothing of the old one is reported
    assert set(registry.locate("vm")) == set()
    replaced.domains.put(dom("vm"))
    assert set(registry.locate("vm")) == {"b"}
    assert registry.locate("never") == {}
