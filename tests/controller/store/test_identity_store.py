"""Sessions, API tokens and the audit log in a real etcd, checked with etcdctl too."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from controller.store import AuditRecord, Store
from controller.store.identity import secret_hash

pytestmark = pytest.mark.anyio


async def test_a_session_is_found_by_its_secret_and_only_the_hash_is_stored(
    store: Store, etcdctl: Callable[..., str]
) -> None:
    secret, _ = await store.identities.create_session("bob", ("ops", "admins"), 60, "10.0.0.1")
    found = await store.identities.session(secret)
    assert found is not None and found.user == "bob" and found.groups == ("admins", "ops")
    stored = etcdctl("get", "--prefix", "/virtplane/sessions/")
    assert secret not in stored and secret_hash(secret) in stored
    assert await store.identities.session(secret + "x") is None
    assert await store.identities.session("vpt_" + secret[4:]) is None


async def test_a_session_expires_with_its_lease(store: Store, etcdctl: Callable[..., str]) -> None:
    secret, record = await store.identities.create_session("bob", (), 2, "")
    with anyio.fail_after(20):  # etcd expires leases on its own clock, at least TTL later
        while etcdctl("get", "--prefix", "/virtplane/sessions/", "--keys-only").strip():
            await anyio.sleep(0.2)
    assert await store.identities.session(secret) is None
    # even before the lease goes, a session past its expiry is refused
    secret, record = await store.identities.create_session("bob", (), 60, "")
    assert await store.identities.session(secret, now=record.expires + timedelta(seconds=1)) is None


async def test_logout_deletes_the_session_and_its_lease(store: Store, etcdctl: Callable[..., str]) -> None:
    secret, record = await store.identities.create_session("bob", (), 60, "")
    assert (await store.identities.revoke_session(secret)) == record
    assert await store.identities.session(secret) is None
    assert not etcdctl("get", "--prefix", "/virtplane/sessions/", "--keys-only").strip()
    assert str(record.lease) not in etcdctl("lease", "list")
    assert await store.identities.revoke_session(secret) is None


async def test_tokens_are_listed_by_id_and_revoked(store: Store) -> None:
    secret, record = await store.identities.create_token("ci", "pipeline")
    expiring, _ = await store.identities.create_token("ci", "short", ttl=60)
    assert (await store.identities.token(secret)) == record
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert await store.identities.token(expiring, now=later) is None
    assert [t.description for t in await store.identities.list_tokens()] == ["pipeline", "short"]
    assert (await store.identities.revoke_token(record.id)) == record
    assert await store.identities.token(secret) is None
    assert await store.identities.revoke_token(record.id) is None


def record(user: str, second: int) -> AuditRecord:
    return AuditRecord(time=datetime(2026, 12, 2, 1, 0, second, tzinfo=UTC), user=user, verb="apply",
                       allowed=True, code=200, objects=("VirtualMachine/web",), object_count=1)


async def test_the_audit_log_is_bounded_oldest_first(store: Store, etcdctl: Callable[..., str]) -> None:
    store.audit.max_records, store.audit.trim_every = 5, 4
    for second in range(12):
        await store.audit.append(record("bob" if second % 2 else "carol", second))
    # trimmed after the 4th, 8th and 12th append: 5 left, the newest
    assert await store.audit.count() == 5
    kept = await store.audit.query()
    assert [r.time.second for r in kept] == [7, 8, 9, 10, 11]
    assert len(etcdctl("get", "--prefix", "/virtplane/audit/", "--keys-only").split()) == 5
    assert [r.time.second for r in await store.audit.query(user="bob")] == [7, 9, 11]
    since = datetime(2026, 12, 2, 1, 0, 10, tzinfo=UTC)
    assert [r.time.second for r in await store.audit.query(since=since)] == [10, 11]
    assert [r.time.second for r in await store.audit.query(limit=2)] == [10, 11]
