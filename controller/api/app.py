"""The REST + JSON API under /api/v1 (Starlette, served by uvicorn).

Routes::

    GET    /api/v1/{plural}                  list (?labelSelector=; a page: ?limit=N&continue=NAME|before=NAME)
    GET    /api/v1/{plural}/{name}           get (spec + status)
    POST   /api/v1/{plural}                  create (409 if it exists)
    PUT    /api/v1/{plural}/{name}           create or replace (metadata.resourceVersion -> precondition, 409)
    DELETE /api/v1/{plural}/{name}           delete (?resourceVersion=)
    GET    /api/v1/{plural}/{name}/status    status only (read-only for users)
    POST   /api/v1/apply                     many objects, one transaction (?dryRun=true: what would change)
    GET    /api/v1/watch                     JSON lines from ?resourceVersion= (?kinds=A,B)
    GET    /api/v1/events                    (?for=Kind/name&correlationId=&watch=true)
    GET    /healthz /readyz /metrics /openapi.json

Every write carries a correlation id (``X-Correlation-Id``, generated when absent, echoed back).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from controller import store as store_mod
from controller.api import audit as audit_mod
from controller.api import rbac
from controller.api.auth import Authenticator, Authorizer, Identity, Verb
from controller.api.identity import IdentityRoutes
from controller.api.openapi import openapi_document
from controller.common.metrics import Registry
from controller.common.wire import (
    CORRELATION_HEADER,
    HookError,
    error_body,
    resource_to_wire,
    spec_to_wire,
    strip_server_fields,
    validation_problems,
)
from specs.event import Event
from specs.kinds import KINDS, KindInfo, UnknownKind, parse_resource, resolve_kind
from specs.meta import Resource
from specs.selector import LabelSelector

# The controllers' diff planners: (kind, name) -> {"plan": [action, ...], "note"?: text} per change.
PlanHook = Callable[[list[Any]], Awaitable[dict[tuple[str, str], dict[str, Any]]]]
# The controllers' adoption preview: (host, domains, all) -> {"adopted": [...], "refused": [...]}.
AdoptHook = Callable[[str, list[str], bool], Awaitable[dict[str, Any]]]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


@dataclass
class ApiContext:
    store: store_mod.Store
    authn: Authenticator
    authz: Authorizer
    metrics: Registry
    plan_hook: PlanHook | None = None  # set by the controllers: plans for a dry-run apply
    adopt_hook: AdoptHook | None = None  # set by the controllers: `virtplane adopt`
    # Where `virtplane disk upload` puts images for the Disk controller (the server's data dir/uploads).
    upload_dir: Path | None = None
    # Finalizers the running controllers put on new objects of a kind (set when they start), so that
    # creating an object costs one write rather than a create and a later finalizer update.
    default_finalizers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Directory login (POST /api/v1/login); None: login is refused, tokens only. See controller/api/identity.py.
    directory: Any = None  # controller.adapters.directory.DirectoryClient
    session_ttl: int = 8 * 3600
    audit: bool = True  # every write is recorded in the audit log (controller/api/audit.py)


def _kind_from_path(request: Request) -> KindInfo:
    try:
        return resolve_kind(request.path_params["plural"])
    except UnknownKind as e:
        raise ApiError(404, "NotFound", str(e)) from e


def _correlation_id(request: Request) -> str:
    return request.headers.get(CORRELATION_HEADER) or uuid.uuid4().hex[:16]


def _parse_objects(raw: list[Any]) -> list[Resource]:
    objects: list[Resource] = []
    problems: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            problems.append({"index": index, "field": "", "message": "expected an object"})
            continue
        try:
            objects.append(parse_resource(strip_server_fields(item) | _precondition(item)))
        except UnknownKind as e:
            problems.append({"index": index, "field": "kind", "message": str(e)})
        except ValidationError as e:
            name = (item.get("metadata") or {}).get("name")
            for p in validation_problems(e):
                problems.append({"index": index, "kind": item.get("kind"), "name": name, **p})
    if problems:
        raise ApiError(422, "Invalid", f"{len(problems)} invalid field(s)", problems=problems)
    return objects


def _precondition(item: dict[str, Any]) -> dict[str, Any]:
    rv = (item.get("metadata") or {}).get("resourceVersion")
    if rv is None:
        return {}
    meta = dict(strip_server_fields(item)["metadata"])
    meta["resourceVersion"] = str(rv)
    return {"metadata": meta}


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, "BadRequest", f"request body is not JSON: {e}") from e


def _change_to_wire(
    change: Any, plans: dict[tuple[str, str], dict[str, Any]] | None, *, bodies: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": change.kind, "name": change.name, "action": change.action}
    if bodies and change.action != "unchanged":
        body["before"] = spec_to_wire(change.before)
        body["after"] = spec_to_wire(change.after) if change.action != "deleted" else None
    preview = plans.get((change.kind, change.name)) if plans is not None else None
    if preview is not None:
        body["plan"] = preview["plan"]
        if preview.get("note"):
            body["planNote"] = preview["note"]
    return body


MAX_PAGE = 1000


def _paging(request: Request) -> tuple[int, str | None, str | None] | None:
    """``?limit=N`` (1-1000) with ``continue=NAME`` (after it) or ``before=NAME``; None: no paging asked."""
    text = request.query_params.get("limit")
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError(400, "BadRequest", f"limit: expected a whole number from 1 to {MAX_PAGE}, got {text!r}")
    return int(text), request.query_params.get("continue") or None, request.query_params.get("before") or None


def _list_response(info: KindInfo, revision: int, items: list[Resource], statuses: Mapping[str, Any],
                   total: int | None = None, more: tuple[bool, bool] = (False, False)) -> JSONResponse:
    """A list; a page of one also says ``total`` and, when there are more, where the next and previous
    pages start (``continue``: the last name of this page; ``previous``: its first)."""
    metadata: dict[str, Any] = {"resourceVersion": str(revision)}
    if total is not None:
        metadata["total"] = total
        if items and more[1]:
            metadata["continue"] = items[-1].metadata.name
        if items and more[0]:
            metadata["previous"] = items[0].metadata.name
    return JSONResponse({"apiVersion": "virtplane.io/v1", "kind": f"{info.kind}List", "metadata": metadata,
                         "items": [resource_to_wire(r, statuses.get(r.metadata.name)) for r in items]})


@dataclass(frozen=True)
class _OneChange:
    """A single-object write, shaped like ``store.Change`` for the permission check."""

    kind: str
    name: str
    action: str
    before: Resource | None
    after: Resource | None


class Api:
    """Request handlers. One instance per server; state lives in ``ctx``."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        m = ctx.metrics
        self.requests = m.counter("virtplane_api_requests_total", "API requests by route and status code.")
        self.latency = m.histogram("virtplane_api_request_seconds", "API request latency by route.")
        self.applied = m.counter("virtplane_apply_objects_total", "Objects handled by apply, by action.")

    # --- plumbing -------------------------------------------------------------------------------

    async def _authenticate(self, request: Request) -> Identity:
        who = await self.ctx.authn.authenticate(request.headers.get("authorization"))
        if who is None:
            raise ApiError(
                401, "Unauthorized",
                "missing, invalid or expired bearer token (`virtplane login`, or the token `virtplane server` wrote)",
            )
        request.state.identity = who
        return who

    async def _authorize(self, request: Request, verb: Verb, kind: str | None, cluster: str | None = None) -> Identity:
        who = await self._authenticate(request)
        if not self.ctx.authz.allowed(who, verb, kind, cluster):
            where = f" in cluster {cluster}" if cluster else ""
            raise ApiError(403, "Forbidden", f"{who.name} may not {verb} {kind or 'this'}{where}")
        return who

    async def _authorize_changes(self, request: Request, who: Identity, changes: list[Any],
                                 objects: list[Resource]) -> None:
        """403 naming every object of a write that ``who`` may not make; nothing is written then."""
        request.state.audit_objects = [f"{c.kind}/{c.name}" for c in changes if c.action != "unchanged"]
        if self.ctx.authz.allows_everything(who):
            return
        lookup = rbac.batch_lookup(objects, self.ctx.store)
        denied = await rbac.forbidden_changes(self.ctx.authz, who, changes, lookup)
        if denied:
            index = {(o.kind, o.metadata.name): i for i, o in enumerate(objects)}
            raise ApiError(
                403, "Forbidden",
                f"{who.name} may not {denied[0].describe()}"
                + (f" (and {len(denied) - 1} more)" if len(denied) > 1 else "") + "; nothing was written",
                denied=[{"kind": d.kind, "name": d.name, "verb": d.verb, "cluster": d.cluster,
                         "index": index.get((d.kind, d.name))} for d in denied],
            )

    def route(
        self, name: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except ApiError as e:
                response = JSONResponse(error_body(e.code, e.reason, e.message, **e.details), status_code=e.code)
            except store_mod.ConflictError as e:
                response = JSONResponse(error_body(409, "Conflict", str(e), kind=e.kind, name=e.name), 409)
            except store_mod.TooLargeError as e:
                response = JSONResponse(error_body(413, "TooLarge", str(e), kind=e.kind, name=e.name), 413)
            except store_mod.NotFoundError as e:
                response = JSONResponse(error_body(404, "NotFound", str(e)), 404)
            except store_mod.PartialApplyError as e:
                response = JSONResponse(
                    error_body(
                        500,
                        "PartialApply",
                        str(e),
                        written=[list(k) for k in e.written],
                        notWritten=[list(k) for k in e.not_written],
                    ),
                    500,
                )
            except store_mod.StoreUnavailable as e:
                response = JSONResponse(error_body(503, "StoreUnavailable", str(e)), 503)
            except HookError as e:
                response = JSONResponse(error_body(e.code, "Refused", str(e)), e.code)
            self.requests.inc(route=name, code=str(response.status_code))
            self.latency.observe(time.perf_counter() - start, route=name)
            if self.ctx.audit and request.method in ("POST", "PUT", "DELETE"):
                await audit_mod.record(self.ctx.store, request, response, name)
            return response

        return endpoint

    def _with_finalizers(self, obj: Resource) -> Resource:
        """Finalizers for a new object (the store keeps the stored ones on update)."""
        wanted = self.ctx.default_finalizers.get(obj.kind)
        if not wanted:
            return obj
        return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"finalizers": wanted})})

    # --- objects --------------------------------------------------------------------------------

    async def list_objects(self, request: Request) -> Response:
        info = _kind_from_path(request)
        who = await self._authenticate(request)
        clusters = self.ctx.authz.clusters_allowed(who, "list", info.kind)
        if clusters is not None and not clusters:
            raise ApiError(403, "Forbidden", f"{who.name} may not list {info.kind}")
        selector = None
        if request.query_params.get("labelSelector"):
            try:
                selector = LabelSelector.parse(request.query_params["labelSelector"])
            except ValueError as e:
                raise ApiError(400, "BadRequest", f"labelSelector: {e}") from e
        paging = _paging(request)
        if paging is not None and clusters is None:  # one page read from etcd, whatever the kind's size
            page = await self.ctx.store.list_page(info.kind, limit=paging[0], after=paging[1], before=paging[2],
                                                  selector=selector)
            return _list_response(info, page.revision, page.items, page.statuses, page.total,
                                  (page.more_before, page.more_after))
        items, revision = await self.ctx.store.list(info.kind, selector)
        if clusters is not None:  # per-cluster bindings only: the objects of those clusters
            lookup = rbac.batch_lookup((), self.ctx.store)
            items = [o for o in items if await rbac.object_cluster(o, lookup) in clusters]
        statuses = await self.ctx.store.list_status(info.kind)
        if paging is None:
            return _list_response(info, revision, items, statuses)
        shown, more_before, more_after = store_mod.slice_by_name(items, *paging)
        return _list_response(info, revision, shown, statuses, len(items), (more_before, more_after))

    async def _get_allowed(self, request: Request, info: KindInfo, name: str) -> Resource:
        """The object, if the caller may get it in its cluster (401, 403 or 404 otherwise)."""
        who = await self._authenticate(request)
        obj = await self.ctx.store.get(info.kind, name)
        cluster = await rbac.object_cluster(obj, rbac.batch_lookup((), self.ctx.store)) if obj else None
        if not self.ctx.authz.allowed(who, "get", info.kind, cluster):
            raise ApiError(403, "Forbidden", f"{who.name} may not get {info.kind}/{name}")
        if obj is None:
            raise ApiError(404, "NotFound", f"{info.kind} {name!r} not found")
        return obj

    async def get_object(self, request: Request) -> Response:
        info = _kind_from_path(request)
        name = request.path_params["name"]
        obj = await self._get_allowed(request, info, name)
        status, _ = await self.ctx.store.get_status(info.kind, name)
        return JSONResponse(resource_to_wire(obj, status))

    async def backup(self, request: Request) -> Response:
        """The whole store (specs with server metadata, statuses); events and leases left out."""
        await self._authorize(request, "list", None)
        return JSONResponse(await store_mod.take_backup(self.ctx.store))

    async def restore(self, request: Request) -> Response:
        """Load a backup into an empty store (409 when it is not empty; nothing written)."""
        await self._authorize(request, "create", None)
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "expected a backup document")
        try:
            written = await store_mod.restore_backup(self.ctx.store, body)
        except store_mod.RestoreRefused as e:
            raise ApiError(409, "Conflict", str(e)) from e
        return JSONResponse({"restored": written})

    async def upload(self, request: Request) -> Response:
        """Receive the image of a Disk whose source is ``import: {upload: true}`` (streamed to the upload
        directory as ``NAME.UID``; it appears complete or not at all). The Disk controller imports it."""
        await self._authorize(request, "update", "Disk")
        name = request.path_params["name"]
        disk = await self.ctx.store.get("Disk", name)
        src = getattr(getattr(disk, "spec", None), "source", None) if disk is not None else None
        if disk is None:
            raise ApiError(404, "NotFound", f"Disk {name!r} not found")
        if src is None or src.import_ is None or not src.import_.upload:
            raise ApiError(409, "Conflict", f"Disk {name} does not take an upload (set spec.source.import.upload)")
        if self.ctx.upload_dir is None:
            raise ApiError(503, "Unavailable", "this server takes no uploads")
        self.ctx.upload_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.ctx.upload_dir / f"{name}.{disk.metadata.uid}"
        partial = final.with_name(final.name + ".part")
        written = 0
        try:
            async with await anyio.open_file(partial, "wb") as out:
                async for chunk in request.stream():
                    await out.write(chunk)
                    written += len(chunk)
            partial.replace(final)
        finally:
            partial.unlink(missing_ok=True)
        return JSONResponse({"disk": name, "bytes": written})

    async def adopt(self, request: Request) -> Response:
        """Propose objects reproducing foreign domains of one host (read-only; see controllers/adopt.py)."""
        await self._authorize(request, "create", "VirtualMachine")
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "expected {\"domains\": [...], \"all\": false}")
        domains, everything = body.get("domains") or [], bool(body.get("all"))
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ApiError(400, "BadRequest", "domains: expected a list of domain names")
        if bool(domains) == everything:
            raise ApiError(400, "BadRequest", "name domains, or ask for all of them (not both, not neither)")
        if self.ctx.adopt_hook is None:
            raise ApiError(503, "Unavailable", "the controllers are not running in this server")
        return JSONResponse(await self.ctx.adopt_hook(request.path_params["name"], domains, everything))

    async def get_status(self, request: Request) -> Response:
        info = _kind_from_path(request)
        name = request.path_params["name"]
        await self._get_allowed(request, info, name)
        status, revision = await self.ctx.store.get_status(info.kind, name)
        body = status.model_dump(mode="json", exclude_none=True) if status is not None else {}
        return JSONResponse({"status": body, "resourceVersion": str(revision)})

    async def put_object(self, request: Request) -> Response:
        info = _kind_from_path(request)
        await self._authenticate(request)
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "expected one object")
        body.setdefault("kind", info.kind)
        body.setdefault("apiVersion", "virtplane.io/v1")
        name = request.path_params["name"]
        if (body.get("metadata") or {}).get("name", name) != name or body["kind"] != info.kind:
            raise ApiError(400, "BadRequest", f"body must be {info.kind} {name!r} to match the URL")
        body.setdefault("metadata", {})["name"] = name
        return await self._write_one(request, body, create_only=False)

    async def create_object(self, request: Request) -> Response:
        info = _kind_from_path(request)
        await self._authenticate(request)
        body = await _json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "expected one object")
        body.setdefault("kind", info.kind)
        body.setdefault("apiVersion", "virtplane.io/v1")
        return await self._write_one(request, body, create_only=True)

    async def _write_one(self, request: Request, body: dict[str, Any], *, create_only: bool) -> Response:
        who: Identity = request.state.identity
        (obj,) = _parse_objects([body])
        existing = await self.ctx.store.get(obj.kind, obj.metadata.name)
        if create_only and existing is not None:
            raise ApiError(409, "AlreadyExists", f"{obj.kind} {obj.metadata.name!r} already exists")
        change = _OneChange(obj.kind, obj.metadata.name, "configured" if existing else "created", existing, obj)
        await self._authorize_changes(request, who, [change], [obj])
        cid = _correlation_id(request)
        result = await self.ctx.store.apply([self._with_finalizers(obj)], correlation_id=cid, user=who.name)
        stored = await self.ctx.store.get(obj.kind, obj.metadata.name)
        assert stored is not None
        code = 201 if result.changes and result.changes[0].action == "created" else 200
        return JSONResponse(resource_to_wire(stored), status_code=code, headers={CORRELATION_HEADER: cid})

    async def delete_object(self, request: Request) -> Response:
        info = _kind_from_path(request)
        who = await self._authenticate(request)
        name = request.path_params["name"]
        existing = await self.ctx.store.get(info.kind, name)
        if existing is not None:
            await self._authorize_changes(request, who, [_OneChange(info.kind, name, "deleted", existing, None)], [])
        elif not self.ctx.authz.allowed(who, "delete", info.kind):
            raise ApiError(403, "Forbidden", f"{who.name} may not delete {info.kind}/{name}")
        cid = _correlation_id(request)
        removed = await self.ctx.store.delete(
            info.kind, name, correlation_id=cid, resource_version=request.query_params.get("resourceVersion"),
            user=who.name,
        )
        if removed is None:
            raise ApiError(404, "NotFound", f"{info.kind} {name!r} not found")
        return JSONResponse(resource_to_wire(removed), headers={CORRELATION_HEADER: cid})

    async def apply(self, request: Request) -> Response:
        who = await self._authenticate(request)
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
            raise ApiError(400, "BadRequest", 'expected {"objects": [...]}')
        dry_run = request.query_params.get("dryRun", "").lower() in ("1", "true", "all") or bool(body.get("dryRun"))
        request.state.audit_skip = dry_run  # a dry run writes nothing: not audited
        objects = _parse_objects(body["objects"])
        prune = bool(body.get("prune"))
        source = body.get("source")
        if prune and not source:
            raise ApiError(400, "BadRequest", "prune needs a source (apply --prune --source NAME)")
        cid = _correlation_id(request)
        objects = [self._with_finalizers(o) for o in objects]
        result = None
        if not self.ctx.authz.allows_everything(who):
            # Check what would change (the same computation, not written), refusing the whole apply if any
            # object of it is forbidden, naming it.
            result = await self.ctx.store.apply(
                objects, correlation_id=cid, source=source, dry_run=True, prune=prune, user=who.name
            )
            await self._authorize_changes(request, who, result.changes, objects)
        if result is None or not dry_run:
            result = await self.ctx.store.apply(
                objects, correlation_id=cid, source=source, dry_run=dry_run, prune=prune, user=who.name
            )
        request.state.audit_objects = [f"{c.kind}/{c.name}" for c in result.changes if c.action != "unchanged"]
        plans = None
        if dry_run and self.ctx.plan_hook is not None and body.get("plan", True):
            plans = await self.ctx.plan_hook([c for c in result.changes if c.action != "unchanged"])
        if not dry_run:
            for change in result.changes:
                self.applied.inc(action=change.action)
        return JSONResponse(
            {
                "revision": result.revision,
                "transactions": result.transactions,
                "dryRun": dry_run,
                "correlationId": cid,
                # Specs before/after only for a dry run (what diff shows); an apply reports actions.
                "changes": [_change_to_wire(c, plans, bodies=dry_run) for c in result.changes],
            },
            headers={CORRELATION_HEADER: cid},
        )

    # --- streams --------------------------------------------------------------------------------

    async def watch(self, request: Request) -> Response:
        kinds = [resolve_kind(k).kind for k in request.query_params.get("kinds", "").split(",") if k] or list(KINDS)
        for kind in kinds:
            await self._authorize(request, "watch", kind)
        parts = [p for p in request.query_params.get("parts", "spec,status").split(",") if p in ("spec", "status")]
        start = request.query_params.get("resourceVersion")
        start_revision = int(start) if start else await self.ctx.store.revision() + 1
        return StreamingResponse(self._stream(kinds, parts, start_revision), media_type="application/x-ndjson")

    async def _stream(self, kinds: list[str], parts: list[str], start_revision: int) -> AsyncIterator[bytes]:
        async for event in self.ctx.store.watch_objects(start_revision, kinds=kinds, parts=parts):
            value = event.value
            body = value.model_dump(mode="json", exclude_none=True) if value is not None else None
            yield (
                json.dumps(
                    {
                        "type": event.type,
                        "kind": event.kind,
                        "name": event.name,
                        "part": event.part,
                        "revision": event.mod_revision,
                        "object": body,
                    }
                )
                + "\n"
            ).encode()

    async def events(self, request: Request) -> Response:
        who = await self._authenticate(request)
        involved = None
        cluster = None
        if request.query_params.get("for"):
            kind_text, _, name = request.query_params["for"].partition("/")
            try:
                involved = (resolve_kind(kind_text).kind, name)
            except UnknownKind as e:
                raise ApiError(400, "BadRequest", str(e)) from e
            # The events of one object: a binding in that object's cluster is enough (`describe`).
            obj = await self.ctx.store.get(*involved)
            cluster = await rbac.object_cluster(obj, rbac.batch_lookup((), self.ctx.store)) if obj else None
        if not self.ctx.authz.allowed(who, "list", "Event", cluster):
            where = f" of {involved[0]}/{involved[1]}" if involved else ""
            raise ApiError(403, "Forbidden", f"{who.name} may not list Events{where}")
        cid = request.query_params.get("correlationId")
        limit = int(request.query_params.get("limit", "500"))
        events = await self.ctx.store.list_events(involved=involved, correlation_id=cid, limit=limit)
        if request.query_params.get("watch", "").lower() not in ("1", "true"):
            return JSONResponse({"items": [e.model_dump(mode="json", exclude_none=True) for e in events]})
        revision = await self.ctx.store.revision()
        return StreamingResponse(
            self._event_stream(events, revision + 1, involved, cid), media_type="application/x-ndjson"
        )

    async def _event_stream(
        self, initial: list[Any], start: int, involved: tuple[str, str] | None, cid: str | None
    ) -> AsyncIterator[bytes]:
        for e in initial:
            yield (json.dumps(e.model_dump(mode="json", exclude_none=True)) + "\n").encode()
        async for event in self.ctx.store.watch_events(start):
            e = event.value
            if not isinstance(e, Event) or event.type != "PUT":
                continue
            if involved and (e.involvedObject.kind, e.involvedObject.name) != involved:
                continue
            if cid and e.correlationId != cid:
                continue
            yield (json.dumps(e.model_dump(mode="json", exclude_none=True)) + "\n").encode()

    # --- health ---------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, request: Request) -> Response:
        try:
            await self.ctx.store.revision()
        except store_mod.StoreUnavailable as e:
            return PlainTextResponse(f"etcd unavailable: {e}", status_code=503)
        return PlainTextResponse("ok")

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


class _CorrelationEcho:
    """Echo the client's correlation id on every response, including errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cid = next((v for k, v in scope["headers"] if k == b"x-correlation-id"), None)

        async def send_with_header(message: Any) -> None:
            if cid and message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k == b"x-correlation-id" for k, _ in headers):
                    headers.append((b"x-correlation-id", cid))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def create_app(ctx: ApiContext) -> Starlette:
    api = Api(ctx)
    r = api.route
    routes = [
        Route("/healthz", r("healthz", api.healthz)),
        Route("/readyz", r("readyz", api.readyz)),
        Route("/metrics", r("metrics", api.metrics)),
        Route("/openapi.json", r("openapi", api.openapi)),
        *IdentityRoutes(api).routes(),  # before /api/v1/{plural}: "tokens" and "audit" are not kinds
        Route("/api/v1/apply", r("apply", api.apply), methods=["POST"]),
        Route("/api/v1/watch", r("watch", api.watch)),
        Route("/api/v1/events", r("events", api.events)),
        Route("/api/v1/hosts/{name}/adopt", r("adopt", api.adopt), methods=["POST"]),
        Route("/api/v1/backup", r("backup", api.backup), methods=["GET"]),
        Route("/api/v1/disks/{name}/upload", r("upload", api.upload), methods=["PUT"]),
        Route("/api/v1/restore", r("restore", api.restore), methods=["POST"]),
        Route("/api/v1/{plural}", r("list", api.list_objects), methods=["GET"]),
        Route("/api/v1/{plural}", r("create", api.create_object), methods=["POST"]),
        Route("/api/v1/{plural}/{name}", r("get", api.get_object), methods=["GET"]),
        Route("/api/v1/{plural}/{name}", r("put", api.put_object), methods=["PUT"]),
        Route("/api/v1/{plural}/{name}", r("delete", api.delete_object), methods=["DELETE"]),
        Route("/api/v1/{plural}/{name}/status", r("status", api.get_status), methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_CorrelationEcho)])
    app.state.api = api  # for the web console (controller.ui), which calls these handlers in-process
    return app
