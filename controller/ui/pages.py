"""The read pages: clusters, a kind's objects (paged), one object, events, and the plan of a pasted change."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import yaml
from starlette.requests import Request
from starlette.responses import Response

from controller.ui.render import as_yaml, cell, columns, kind_of_plural, lookup, text
from specs.kinds import KINDS, KindInfo

if TYPE_CHECKING:
    from controller.ui.app import Console

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_LIMIT = 50


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        return max(low, min(high, int(value))) if value is not None else default
    except ValueError:
        return default


def _git_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as it is written in Git: no status, no server-set metadata."""
    meta = obj.get("metadata") or {}
    keep = {k: meta[k] for k in ("name", "labels", "annotations") if meta.get(k)}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": keep, "spec": obj.get("spec")}


def _diff_lines(change: dict[str, Any]) -> list[str]:
    before = as_yaml(change["before"]).splitlines() if change.get("before") else []
    after = as_yaml(change["after"]).splitlines() if change.get("after") else []
    return list(difflib.unified_diff(before, after, "stored", "pasted", lineterm=""))[2:]


class Pages:
    def __init__(self, console: Console) -> None:
        self.c = console
        self.calls = console.calls

    async def _list(self, request: Request, secret: str, plural: str, selector: str = "") -> tuple[int, Any]:
        query = {"labelSelector": selector} if selector else None
        return await self.calls.call(request, "list", secret, query=query, plural=plural)

    async def _kind_page(self, request: Request) -> tuple[str, KindInfo] | Response:
        """The session and the kind of ``/ui/{plural}/...``, or the login page / a 404 page."""
        secret = await self.c.signed_in(request)
        if isinstance(secret, Response):
            return secret
        info = kind_of_plural(request.path_params["plural"])
        if info is None:
            return await self.c.error(request, 404, {"error": {"reason": "NotFound", "message": "no such page"}})
        return secret, info

    async def overview(self, request: Request) -> Response:
        secret = await self.c.signed_in(request)
        if isinstance(secret, Response):
            return secret
        code, body = await self._list(request, secret, "clusters")
        if code != 200:
            return await self.c.error(request, code, body)
        info = KINDS["Cluster"]
        cols = columns(info)
        rows = [{"name": o["metadata"]["name"], "cells": [cell(o, c) for c in cols]} for o in body["items"]]
        return await self.c.page(request, "list.html", info=info, columns=cols, rows=rows,
                                 total=len(rows), first="", last="", limit=len(rows), selector="",
                                 revision=body["metadata"]["resourceVersion"], title="Clusters", links={})

    async def listing(self, request: Request) -> Response:
        """A page of a kind's objects, by name, read as one page from the API (``?limit=&continue=``)."""
        found = await self._kind_page(request)
        if isinstance(found, Response):
            return found
        secret, info = found
        selector = request.query_params.get("labelSelector", "").strip()
        limit = _int(request.query_params.get("limit"), DEFAULT_LIMIT, 1, max(PAGE_SIZES))
        query = {"limit": str(limit)} | ({"labelSelector": selector} if selector else {})
        if request.query_params.get("continue"):  # a token from the API: the next or the previous page
            query["continue"] = request.query_params["continue"]
        code, body = await self.calls.call(request, "list", secret, query=query, plural=info.plural)
        if code != 200:
            return await self.c.error(request, code, body)
        meta = body["metadata"]
        cols = columns(info)
        rows = [{"name": o["metadata"]["name"], "cells": [cell(o, c) for c in cols]} for o in body["items"]]

        def link(token: str | None) -> str | None:
            if token is None:
                return None
            rest = {"limit": str(limit)} | ({"labelSelector": selector} if selector else {})
            return f"/ui/{info.plural}/?{urlencode(rest | {'continue': token})}"

        first = rows[0]["name"] if rows else ""
        return await self.c.page(
            # total: not counted with a selector (that would read every object)
            request, "list.html", info=info, columns=cols, rows=rows, total=meta.get("total"),
            first=first, last=rows[-1]["name"] if rows else "", limit=limit, selector=selector,
            revision=meta["resourceVersion"], title=info.kind,
            links={"prev": link(meta.get("previous")), "next": link(meta.get("continue")),
                   "first": f"/ui/{info.plural}/?" + urlencode({k: v for k, v in query.items()
                                                                if k in ("limit", "labelSelector")})
                   if meta.get("previous") else None},
            page_sizes=PAGE_SIZES)

    async def detail(self, request: Request) -> Response:
        found = await self._kind_page(request)
        if isinstance(found, Response):
            return found
        secret, info = found
        name = request.path_params["name"]
        code, obj = await self.calls.call(request, "get", secret, plural=info.plural, name=name)
        if code != 200:
            return await self.c.error(request, code, obj)
        _, events = await self.calls.call(request, "events", secret, query={"for": f"{info.kind}/{name}",
                                                                            "limit": "50"})
        cols = columns(info)
        status = obj.get("status") or {}
        related = await self._related(request, secret, info.kind, name, obj)
        return await self.c.page(
            request, "detail.html", info=info, obj=obj, name=name, title=f"{info.kind} {name}",
            fields=[(c.header, cell(obj, c)) for c in cols], conditions=status.get("conditions") or [],
            git_yaml=as_yaml(_git_view(obj)), status_yaml=as_yaml(status) if status else "",
            events=list(reversed((events or {}).get("items", [])))[:50], related=related,
            last_cid=status.get("correlationId") or (obj.get("metadata") or {}).get("correlationId"),
            reverted=request.query_params.get("reverted"))

    async def _related(self, request: Request, secret: str, kind: str, name: str,
                       obj: dict[str, Any]) -> dict[str, Any]:
        """Objects shown with this one: a host's VMs, a VM's migrations and snapshots, a cluster's hosts."""
        related: dict[str, Any] = {}

        async def items(plural: str, keep: Any) -> list[dict[str, Any]]:
            code, body = await self._list(request, secret, plural)
            return [o for o in body["items"] if keep(o)] if code == 200 else []

        if kind == "Host":
            related["vms"] = await items("virtualmachines", lambda o: lookup(o, "status.host") == name)
        elif kind == "Cluster":
            related["hosts"] = await items("hosts", lambda o: lookup(o, "spec.cluster") == name)
        elif kind == "VirtualMachine":
            migrations = await items("migrations", lambda o: lookup(o, "spec.vm") == name)
            related["migrations"] = sorted(migrations, key=lambda o: o["metadata"].get("creationTimestamp", ""),
                                           reverse=True)
            related["snapshots"] = await items("snapshots", lambda o: lookup(o, "spec.vm") == name)
            cluster = lookup(obj, "spec.cluster")
            related["hosts"] = await items("hosts", lambda o: lookup(o, "spec.cluster") == cluster)
        elif kind == "Migration":
            code, vm = await self.calls.call(request, "get", secret, plural="virtualmachines", name=obj["spec"]["vm"])
            related["vm"] = vm if code == 200 else None
        return related

    async def events(self, request: Request) -> Response:
        secret = await self.c.signed_in(request)
        if isinstance(secret, Response):
            return secret
        query = {k: v for k in ("correlationId", "for") if (v := request.query_params.get(k, "").strip())}
        code, body = await self.calls.call(request, "events", secret, query=query | {"limit": "200"})
        if code != 200:
            return await self.c.error(request, code, body)
        items = list(reversed(body["items"]))
        return await self.c.page(request, "events.html", title="Events", events=items, query=query,
                                 plural_of={k: i.plural for k, i in KINDS.items()})

    async def diff_form(self, request: Request) -> Response:
        secret = await self.c.signed_in(request)
        if isinstance(secret, Response):
            return secret
        return await self.c.page(request, "diff.html", title="Plan a change", manifest="", changes=None,
                                 problem="")

    async def diff(self, request: Request) -> Response:
        """The plan of a pasted change: a dry-run apply, the same request and answer as `virtplane diff`."""
        secret = await self.c.signed_in(request)
        if isinstance(secret, Response):
            return secret
        fields = await self.c.form(request, secret)
        if isinstance(fields, Response):
            return fields
        manifest = fields.get("manifest", "")
        try:
            docs = [d for d in yaml.safe_load_all(manifest) if d is not None]
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            return await self.c.page(request, "diff.html", code=400, title="Plan a change",
                                     manifest=manifest, changes=None, problem=f"{where}not YAML: {e}")
        code, body = await self.calls.call(request, "apply", secret, query={"dryRun": "true"},
                                           body={"objects": docs})
        if code != 200:
            error = (body or {}).get("error", {})
            problems = [f"object {p.get('index', 0) + 1}: {p.get('field') or '(object)'}: {p.get('message')}"
                        for p in error.get("details", {}).get("problems", [])]
            return await self.c.page(request, "diff.html", code=code, title="Plan a change",
                                     manifest=manifest, changes=None,
                                     problem="; ".join([error.get("message", "refused"), *problems]))
        changes = [c | {"diff": _diff_lines(c)} for c in body["changes"]]
        return await self.c.page(request, "diff.html", title="Plan a change", manifest=manifest,
                                 changes=changes, problem="", text=text)

