"""The API under attack (issue 9), in process against a real etcd: authentication before the body,
body cap, permission from the body, no 500 for bad input, undecodable stored objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from controller.api.app import ApiContext, create_app
from controller.api.auth import AllowAdmins, Identity, StaticTokenAuthenticator, Verb
from controller.common.metrics import Registry
from controller.store import Store
from controller.store.codec import spec_key

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "virtplane.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


CLUSTER = doc("Cluster", "main", {})
HOST = doc("Host", "h1", {"cluster": "main", "uri": "test:///default"})


class Recording(AllowAdmins):
    """Admins may do everything except what ``deny`` says; every question is recorded."""

    def __init__(self, deny: Callable[[str | None, str | None], bool] = lambda k, n: False) -> None:
        self.calls: list[tuple[str, str | None, str | None, str | None]] = []
        self.deny = deny

    def allowed(self, who: Identity, verb: Verb, kind: str | None, cluster: str | None = None,
                name: str | None = None) -> bool:
        self.calls.append((verb, kind, name, cluster))
        return not self.deny(kind, name) and super().allowed(who, verb, kind, cluster, name)

    def allows_everything(self, who: Identity) -> bool:
        return False  # ask about every object


def make_client(store: Store, **ctx: Any) -> httpx.AsyncClient:
    context = ApiContext(store=store, authn=StaticTokenAuthenticator(TOKEN), authz=ctx.pop("authz", AllowAdmins()),
                         metrics=Registry(), **ctx)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(context)), base_url="http://api")


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(store, max_body_bytes=64 * 1024) as client:
        yield client


async def names(store: Store, kind: str) -> list[str]:
    items, _ = await store.list(kind)
    return [o.metadata.name for o in items]


async def test_no_token_is_401_even_for_an_empty_apply(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/apply", json={"objects": []})
    assert r.status_code == 401 and r.json()["error"]["reason"] == "Unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert (await api.post("/api/v1/apply", json={"objects": []}, headers=AUTH)).status_code == 200


async def test_body_over_the_cap_is_413_with_the_limit(api: httpx.AsyncClient, store: Store) -> None:
    big = {"objects": [CLUSTER], "pad": "x" * 100_000}
    r = await api.post("/api/v1/apply", json=big, headers=AUTH)
    assert r.status_code == 413 and r.json()["error"]["details"]["limit"] == 64 * 1024

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield b'{"objects": [], "pad": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}'

    r = await api.post("/api/v1/apply", content=chunks(), headers=AUTH)
    assert r.status_code == 413 and "65536 bytes" in r.json()["error"]["message"]
    assert await names(store, "Cluster") == []


async def test_post_checks_the_body_kind_not_the_url(api: httpx.AsyncClient, store: Store) -> None:
    r = await api.post("/api/v1/clusters", json=HOST, headers=AUTH)
    assert r.status_code == 400 and "kind 'Host'" in r.json()["error"]["message"]
    assert await names(store, "Host") == []


async def test_permission_is_asked_per_object_from_the_body(store: Store) -> None:
    authz = Recording(deny=lambda kind, name: kind == "Host")
    async with make_client(store, authz=authz) as api:
        r = await api.post("/api/v1/apply", json={"objects": [CLUSTER, HOST]}, headers=AUTH)
        error = r.json()["error"]
        assert r.status_code == 403 and "create Host/h1 in cluster main" in error["message"]
        assert error["details"]["denied"] == [{"kind": "Host", "name": "h1", "verb": "create", "cluster": "main",
                                               "index": 1}]
        assert ("create", "Host", "h1", "main") in authz.calls
        assert await names(store, "Cluster") == [] and await names(store, "Host") == []
        r = await api.put("/api/v1/hosts/h1", json=HOST, headers=AUTH)
        assert r.status_code == 403
        assert await names(store, "Host") == []


async def test_metrics_needs_the_token_unless_public(store: Store) -> None:
    async with make_client(store) as api:
        assert (await api.get("/metrics")).status_code == 401
        assert (await api.get("/metrics", headers=AUTH)).status_code == 200
        assert (await api.get("/healthz")).status_code == 200
    async with make_client(store, metrics_public=True) as api:
        assert (await api.get("/metrics")).status_code == 200


@pytest.mark.parametrize(
    ("method", "url", "body", "code"),
    [
        ("POST", "/api/v1/apply", {"objects": [{**CLUSTER, "metadata": {"name": "c", "resourceVersion": "abc"}}]},
         422),
        ("POST", "/api/v1/apply", {"objects": [{**CLUSTER, "metadata": ["main"]}]}, 422),
        ("POST", "/api/v1/apply", {"objects": [CLUSTER], "source": 123}, 400),
        ("POST", "/api/v1/apply", {"objects": [CLUSTER], "source": "../x"}, 400),
        ("PUT", "/api/v1/clusters/main", {**CLUSTER, "metadata": ["main"]}, 400),
        ("DELETE", "/api/v1/clusters/main?resourceVersion=x", None, 400),
        ("GET", "/api/v1/watch?resourceVersion=x", None, 400),
        ("GET", "/api/v1/watch?kinds=Nope", None, 400),
        ("GET", "/api/v1/events?limit=x", None, 400),
        ("GET", "/api/v1/events?limit=0", None, 400),
        ("GET", "/api/v1/nope", None, 404),
    ],
)
async def test_bad_input_is_4xx_with_a_message(
    api: httpx.AsyncClient, method: str, url: str, body: Any, code: int
) -> None:
    r = await api.request(method, url, json=body, headers=AUTH)
    assert r.status_code == code, r.text
    assert r.json()["error"]["message"]


async def test_deeply_nested_json_is_400(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/v1/apply", content=("[" * 30_000 + "]" * 30_000).encode(), headers=AUTH)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]


async def test_undecodable_objects_are_skipped_with_an_event_and_deletable(
    api: httpx.AsyncClient, store: Store, etcdctl: Callable[..., str]
) -> None:
    r = await api.post("/api/v1/apply", json={"objects": [CLUSTER]}, headers=AUTH)
    assert r.status_code == 200
    etcdctl("put", spec_key("Cluster", "junk").decode(), "not json at all")
    bad = {**doc("Cluster", "bad", {}), "metadata": {"name": "bad", "source": 123}}
    etcdctl("put", spec_key("Cluster", "bad").decode(), json.dumps(bad))
    r = await api.get("/api/v1/clusters", headers=AUTH)
    assert r.status_code == 200
    assert [i["metadata"]["name"] for i in r.json()["items"]] == ["main"]
    events = (await api.get("/api/v1/events?for=Cluster/junk", headers=AUTH)).json()["items"]
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "Undecodable")]
    r = await api.get("/api/v1/clusters/bad", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["reason"] == "Undecodable"
    r = await api.post("/api/v1/apply", json={"objects": [doc("Cluster", "bad", {})]}, headers=AUTH)
    assert r.status_code == 422 and "delete it" in r.json()["error"]["message"]
    etcdctl("put", spec_key("Cluster", "Not_A_Name").decode(), "{}")  # not even a valid name
    for name in ("junk", "bad", "Not_A_Name"):
        assert (await api.delete(f"/api/v1/clusters/{name}", headers=AUTH)).status_code == 200
    assert etcdctl("get", "--prefix", "/virtplane/specs/Cluster/", "--keys-only").split() == [
        "/virtplane/specs/Cluster/main"
    ]


async def test_lists_are_paginated_at_one_revision_and_streamed(api: httpx.AsyncClient, store: Store) -> None:
    docs = [{**doc("Cluster", f"c-{i:02}", {}), "metadata": {"name": f"c-{i:02}", "labels": {"odd": str(i % 2)}}}
            for i in range(25)]
    assert (await api.post("/api/v1/apply", json={"objects": docs}, headers=AUTH)).status_code == 200
    names: list[str] = []
    revisions = set()
    params: dict[str, str] = {"limit": "10"}
    pages = 0
    while True:
        body = (await api.get("/api/v1/clusters", params=params, headers=AUTH)).json()
        pages += 1
        names += [i["metadata"]["name"] for i in body["items"]]
        revisions.add(body["metadata"]["resourceVersion"])
        if pages == 1:  # written after the first page: not in this list (every page at its revision)
            late = doc("Cluster", "c-99", {})
            assert (await api.post("/api/v1/apply", json={"objects": [late]}, headers=AUTH)).status_code == 200
        if "continue" not in body["metadata"]:
            break
        params["continue"] = body["metadata"]["continue"]
    assert pages == 3 and names == [f"c-{i:02}" for i in range(25)] and len(revisions) == 1
    streamed = (await api.get("/api/v1/clusters", headers=AUTH)).json()  # no limit: the whole list, streamed
    assert [i["metadata"]["name"] for i in streamed["items"]] == [*names, "c-99"]
    odd = (await api.get("/api/v1/clusters", params={"labelSelector": "odd=1"}, headers=AUTH)).json()
    assert [i["metadata"]["name"] for i in odd["items"]] == [f"c-{i:02}" for i in range(1, 25, 2)]
    empty = (await api.get("/api/v1/virtualmachines", headers=AUTH)).json()
    assert empty["items"] == [] and empty["kind"] == "VirtualMachineList"


@pytest.mark.parametrize("params", [{"limit": "x"}, {"limit": "0"}, {"limit": "99999"}, {"continue": "garbage"},
                                    {"continue": "eyJzdGFydCI6IDEsICJydiI6ICJ4In0"}])
async def test_bad_list_parameters_are_400(api: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await api.get("/api/v1/clusters", params=params, headers=AUTH)
    assert r.status_code == 400, r.text


async def test_a_compacted_continue_token_is_410(api: httpx.AsyncClient, store: Store) -> None:
    docs = [doc("Cluster", f"c-{i}", {}) for i in range(3)]
    await api.post("/api/v1/apply", json={"objects": docs}, headers=AUTH)
    body = (await api.get("/api/v1/clusters", params={"limit": "1"}, headers=AUTH)).json()
    await api.post("/api/v1/apply", json={"objects": [doc("Cluster", "later", {})]}, headers=AUTH)
    await store.compact(await store.revision())
    r = await api.get("/api/v1/clusters", params={"limit": "1", "continue": body["metadata"]["continue"]},
                      headers=AUTH)
    assert r.status_code == 410 and r.json()["error"]["reason"] == "Expired"


async def test_pages_with_a_selector_are_full_and_go_both_ways(api: httpx.AsyncClient, store: Store) -> None:
    """With a labelSelector a page holds ``limit`` matching objects (read from as many store pages as that
    takes), ``previous`` goes back to the same pages, and an unfiltered page counts the kind (total)."""
    vms = [doc("VirtualMachine", f"vm-{i:02d}", {"cluster": "main", "cpu": {"cores": 1}, "memory": {"size": "1Gi"}})
           for i in range(30)]
    for i, vm in enumerate(vms):
        vm["metadata"]["labels"] = {"tier": "web" if i % 4 == 0 else "db"}
    assert (await api.post("/api/v1/apply", json={"objects": vms}, headers=AUTH)).status_code == 200

    async def page(**params: Any) -> dict[str, Any]:
        response = await api.get("/api/v1/virtualmachines", params={"labelSelector": "tier=web", "limit": 3,
                                                                    **params}, headers=AUTH)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def listed(body: dict[str, Any]) -> list[str]:
        return [o["metadata"]["name"] for o in body["items"]]

    web = [f"vm-{i:02d}" for i in range(0, 30, 4)]  # 8 of them
    first = await page()
    assert listed(first) == web[:3] and "previous" not in first["metadata"] and "total" not in first["metadata"]
    second = await page(**{"continue": first["metadata"]["continue"]})
    assert listed(second) == web[3:6]
    third = await page(**{"continue": second["metadata"]["continue"]})
    assert listed(third) == web[6:] and "continue" not in third["metadata"]
    back = await page(**{"continue": third["metadata"]["previous"]})
    assert listed(back) == web[3:6]
    assert listed(await page(**{"continue": back["metadata"]["previous"]})) == web[:3]
    plain = (await api.get("/api/v1/virtualmachines", params={"limit": 7}, headers=AUTH)).json()
    assert plain["metadata"]["total"] == 30 and len(plain["items"]) == 7


async def test_events_page_back_in_time_with_continue(api: httpx.AsyncClient, store: Store) -> None:
    """Events are read newest first in pages of ``limit``; ``metadata.continue`` gives the older page."""
    from specs.event import Event, InvolvedObject

    for i in range(7):
        await store.emit_event(Event(type="Normal", reason="Step", message=f"step {i}",
                                     involvedObject=InvolvedObject(kind="Host", name="h1"), source="test"))

    async def page(**params: Any) -> dict[str, Any]:
        response = await api.get("/api/v1/events", params={"for": "Host/h1", "limit": 3, **params}, headers=AUTH)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def steps(body: dict[str, Any]) -> list[str]:
        return [e["message"] for e in body["items"]]

    newest = await page()
    assert steps(newest) == ["step 4", "step 5", "step 6"]
    older = await page(**{"continue": newest["metadata"]["continue"]})
    assert steps(older) == ["step 1", "step 2", "step 3"]
    oldest = await page(**{"continue": older["metadata"]["continue"]})
    assert steps(oldest) == ["step 0"] and "continue" not in oldest["metadata"]
    bad = await api.get("/api/v1/events", params={"continue": "garbage"}, headers=AUTH)
    assert bad.status_code == 400
