"""Issue 9's request order with issue 11's identity: a session (an etcd read) is resolved from the headers
before the body is read, refused writes are audited, and paged or streamed lists hold only the objects of
the caller's clusters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from controller.api.app import ApiContext, create_app
from controller.api.auth import StaticTokenAuthenticator
from controller.api.rbac import RbacAuthorizer, RbacIndex
from controller.api.sessions import SessionAuthenticator
from controller.common.metrics import Registry
from controller.store import Store
from specs.kinds import parse_resource
from specs.rbac import RoleBinding

ADMIN = {"Authorization": "Bearer admin-token"}


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "virtplane.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def client(store: Store, index: RbacIndex, **ctx: Any) -> httpx.AsyncClient:
    context = ApiContext(store=store, authn=SessionAuthenticator(StaticTokenAuthenticator("admin-token"), store),
                         authz=RbacAuthorizer(index), metrics=Registry(), **ctx)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(context)), base_url="http://api")


async def test_an_unknown_session_is_401_before_the_body_and_audited(store: Store) -> None:
    async with client(store, RbacIndex(), max_body_bytes=64 * 1024) as api:
        bogus = {"Authorization": "Bearer vps_not-a-session"}
        big = {"objects": [], "pad": "x" * 100_000}  # over the cap: a 413 would mean the body came first
        r = await api.post("/api/v1/apply", json=big, headers=bogus)
        assert r.status_code == 401 and "expired bearer token" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        records = await store.audit.query(user=None, since=None, limit=10)
        assert [(a.verb, a.code, a.allowed) for a in records] == [("apply", 401, False)]
        secret, _ = await store.identities.create_session("bob", ("ops",), 60, "127.0.0.1")
        r = await api.post("/api/v1/apply", json=big, headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 413  # a valid session: now the cap decides


async def test_pages_and_streams_hold_only_the_callers_clusters(store: Store) -> None:
    index = RbacIndex()
    binding = parse_resource({"kind": "RoleBinding", "metadata": {"name": "view-a"}, "spec": {
        "role": "viewer", "subjects": [{"kind": "User", "name": "bob"}], "clusters": ["a"]}})
    assert isinstance(binding, RoleBinding)
    index.put_binding(binding)
    objects = [doc("Cluster", "a", {}), doc("Cluster", "b", {})]
    objects += [doc("Host", f"h{i:02d}", {"cluster": "ab"[i % 2], "uri": "test:///default"}) for i in range(10)]
    async with client(store, index) as api:
        assert (await api.post("/api/v1/apply", json={"objects": objects}, headers=ADMIN)).status_code == 200
        secret, _ = await store.identities.create_session("bob", (), 60, "127.0.0.1")
        bob = {"Authorization": f"Bearer {secret}"}
        want = [f"h{i:02d}" for i in range(0, 10, 2)]
        r = await api.get("/api/v1/hosts", headers=bob)  # streamed
        assert r.status_code == 200 and [i["metadata"]["name"] for i in r.json()["items"]] == want
        seen: list[str] = []
        token = ""
        async for page in _pages(api, bob, token):
            seen += page
        assert seen == want
        all_hosts = (await api.get("/api/v1/hosts", headers=ADMIN)).json()["items"]
        assert len(all_hosts) == 10


async def _pages(api: httpx.AsyncClient, headers: dict[str, str], token: str) -> AsyncIterator[list[str]]:
    while True:
        r = await api.get("/api/v1/hosts", params={"limit": 3, **({"continue": token} if token else {})},
                          headers=headers)
        assert r.status_code == 200
        body = r.json()
        yield [i["metadata"]["name"] for i in body["items"]]
        token = body["metadata"].get("continue", "")
        if not token:
            return
