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

import base64
import dataclasses
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from controller import store as store_mod
from controller.api import applybody, rbac
from controller.api import audit as audit_mod
from controller.api.auth import Authenticator, Authorizer, Identity, Verb, authorize
from controller.api.identity import IdentityRoutes
from controller.api.openapi import openapi_document
from controller.common.limits import DEFAULT_MAX_BODY_BYTES
from controller.common.metrics import Registry
from controller.common.wire import (
    CORRELATION_HEADER,
    HookError,
    error_body,
    resource_to_wire,
    spec_to_wire,
)
from specs.confinement import HostPathPolicy, path_problems
from specs.event import Event
from specs.kinds import KINDS, KindInfo, UnknownKind, resolve_kind
from specs.meta import Resource
from specs.selector import LabelSelector
from specs.storage import StorageDomain

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
    # Host paths a spec may name (kernels, images, block devices, URI sockets and keys): specs.confinement.
    policy: HostPathPolicy = field(default_factory=HostPathPolicy)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies get 413 (read no further)
    metrics_public: bool = False  # /metrics without a token (--metrics-public)
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
    objects, problems = applybody.parse_items(raw)
    if problems:
        raise ApiError(422, "Invalid", f"{len(problems)} invalid field(s)", problems=problems)
    return objects


def _revision_param(request: Request, name: str = "resourceVersion") -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 19:
        raise ApiError(400, "BadRequest", f"?{name}= expects a whole number (an etcd revision), got {text[:40]!r}")
    return int(text)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text[:8]) <= high:
        raise ApiError(400, "BadRequest", f"?{name}= expects a whole number from {low} to {high}, got {text[:40]!r}")
    return int(text)


BIG_BODY = 1024 * 1024  # request bodies above this (or of unknown length) ...
BIG_BODIES_AT_ONCE = 2  # ... are handled this many at a time
MAX_PAGE = 10_000  # ?limit= at most this
STREAM_PAGE = 500  # objects read, decoded and sent at a time when a whole list is streamed


@dataclass(frozen=True)
class Position:
    """Where a page starts (a name, inclusive) or ends (before a name), and the list's revision."""

    start: str = ""
    before: str | None = None
    revision: int = 0


def _encode_continue(where: Position, revision: int) -> str:
    fields: dict[str, Any] = {"rv": revision}
    if where.before is not None:
        fields["before"] = where.before
    else:
        fields["start"] = where.start
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")


def _decode_continue(token: str | None) -> Position:
    """A token from ``metadata.continue`` or ``metadata.previous``; an empty one is the first page."""
    if not token:
        return Position()
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        revision = data["rv"]
        if not isinstance(revision, int) or revision < 1:
            raise ValueError(token)
        if "before" in data:
            if not isinstance(data["before"], str) or not data["before"]:
                raise ValueError(token)
            return Position(before=data["before"], revision=revision)
        if not isinstance(data["start"], str):
            raise ValueError(token)
        return Position(start=data["start"], revision=revision)
    except (ValueError, KeyError, TypeError) as e:
        raise ApiError(400, "BadRequest", "continue: not a token this server gave (list again without it)") from e


def _decode_event_continue(token: str | None) -> str | None:
    """The name of the event an older page of events ends before (a token from ``metadata.continue``)."""
    if not token:
        return None
    where = _decode_continue(token)
    if where.before is None:
        raise ApiError(400, "BadRequest", "continue: not a token this server gave (list again without it)")
    return where.before


def _wire_items(page: Any, selector: LabelSelector | None) -> list[dict[str, Any]]:
    return [resource_to_wire(r, st) for r, st in page.items
            if selector is None or selector.matches(r.metadata.labels)]


def _encode_items(page: Any, selector: LabelSelector | None, first: bool) -> bytes:
    parts = [json.dumps(item) for item in _wire_items(page, selector)]
    if not parts:
        return b""
    return (("" if first else ",") + ",".join(parts)).encode()


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


async def _json(request: Request) -> Any:
    try:
        raw = await request.body()
    except BodyTooLarge as e:
        raise ApiError(413, "TooLarge", f"{e} (the server's limit); split the input", limit=e.limit) from e
    try:
        return await anyio.to_thread.run_sync(orjson.loads, raw)  # a big body is not parsed on the loop
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if "depth limit" in str(e):  # orjson stops at 1024 levels
            raise ApiError(400, "BadRequest", "request body is nested too deeply") from e
        raise ApiError(400, "BadRequest", f"request body is not JSON: {str(e)[:200]}") from e


def _apply_options(request: Request) -> dict[str, Any]:
    """The options of a streamed apply, from its query (a JSON apply has them in its body)."""
    query = request.query_params

    def flag(name: str, default: bool) -> bool:
        text = query.get(name, "").lower()
        if text == "":
            return default
        if text not in ("1", "true", "0", "false"):
            raise ApiError(400, "BadRequest", f"?{name}= expects true or false, got {text[:20]!r}")
        return text in ("1", "true")

    return {"prune": flag("prune", False), "source": query.get("source"), "plan": flag("plan", True),
            "omitUnchanged": flag("omitUnchanged", False)}


async def _read_stream(request: Request, prefetch: store_mod.Prefetch) -> list[Resource]:
    """The objects of an NDJSON apply (controller/api/applybody.py), or the ApiError that refuses it."""
    try:
        objects, problems = await applybody.read_ndjson(request.stream(), prefetch.want, store_mod.FEW_PER_KIND)
    except BodyTooLarge as e:
        raise ApiError(413, "TooLarge", f"{e} (the server's limit); split the input", limit=e.limit) from e
    except applybody.StreamError as e:
        raise ApiError(400, "BadRequest", f"apply stream: {e}; nothing was written") from e
    if problems:
        raise ApiError(422, "Invalid", f"{len(problems)} invalid field(s)", problems=problems)
    return objects


async def _threaded(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    """Chunks of a response body, each encoded in a worker thread (not on the event loop)."""
    iterator = iter(chunks)
    done = object()
    while (chunk := await anyio.to_thread.run_sync(next, iterator, done)) is not done:
        yield chunk  # type: ignore[misc]


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
        """The caller: the identity the guard resolved from the headers before the body was read (or,
        outside the guard, resolved now); 401 without one."""
        who: Identity | None = getattr(request.state, "identity", None)
        if who is None:
            who = await self.ctx.authn.authenticate(request.headers.get("authorization"))
        if who is None:
            raise ApiError(401, "Unauthorized", UNAUTHORIZED)
        request.state.identity = who
        return who

    async def _authorize(
        self, request: Request, verb: Verb, kind: str | None, cluster: str | None = None, name: str | None = None
    ) -> Identity:
        who = await self._authenticate(request)
        if not authorize(self.ctx.authz, who, verb, kind, name, cluster):
            what = f"{kind or 'this'}{f'/{name}' if name else ''}{f' in cluster {cluster}' if cluster else ''}"
            raise ApiError(403, "Forbidden", f"{who.name} may not {verb} {what}")
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
            except store_mod.UndecodableError as e:
                response = JSONResponse(error_body(422, "Undecodable", str(e), kind=e.kind, name=e.name), 422)
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

    async def _check_paths(self, objects: list[Resource]) -> None:
        """422 for any host path the server's policy does not allow (specs.confinement)."""
        if not any(o.kind in ("Host", "Disk", "VirtualMachine", "StorageDomain") for o in objects):
            return
        domains: dict[str, StorageDomain] = {}
        if any(o.kind in ("Disk", "VirtualMachine") for o in objects):
            stored, _ = await self.ctx.store.list("StorageDomain")
            domains = {o.metadata.name: o for o in stored if isinstance(o, StorageDomain)}
            domains |= {o.metadata.name: o for o in objects if isinstance(o, StorageDomain)}
        problems = [
            {"index": index, "kind": obj.kind, "name": obj.metadata.name, "field": field_path, "message": message}
            for index, obj in enumerate(objects)
            for field_path, message in path_problems(obj, self.ctx.policy, domains)
        ]
        if problems:
            raise ApiError(422, "Invalid", f"{len(problems)} host path(s) not allowed", problems=problems)

    async def _readable(self, kind: str, name: str) -> Resource | None:
        """The stored object, or None if there is none or it does not decode (planted or from an older
        version: its cluster is unknown, so only a global permission covers it)."""
        try:
            return await self.ctx.store.get(kind, name)
        except store_mod.UndecodableError:
            return None

    def _with_finalizers(self, obj: Resource) -> Resource:
        """Finalizers for a new object (the store keeps the stored ones on update)."""
        wanted = self.ctx.default_finalizers.get(obj.kind)
        if not wanted:
            return obj
        return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"finalizers": wanted})})

    # --- objects --------------------------------------------------------------------------------

    async def list_objects(self, request: Request) -> Response:
        """One page with ``?limit=N`` (``metadata.continue`` names the next: pass it back as ``?continue=``),
        or, without a limit, the whole list streamed page by page: memory stays bounded by a page either
        way, and every page is read at the first page's revision."""
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
        limit = _int_param(request, "limit", 0, 1, MAX_PAGE)
        where = _decode_continue(request.query_params.get("continue"))
        head = {"apiVersion": "virtplane.io/v1", "kind": f"{info.kind}List"}
        if limit:
            page, items = await self._collect(info.kind, where, limit, selector, clusters)
            meta: dict[str, Any] = {"resourceVersion": str(page.revision)}
            if selector is None and clusters is None:
                meta["total"] = await self.ctx.store.count(info.kind, page.revision)
            if page.next_start is not None:
                meta["continue"] = _encode_continue(Position(start=page.next_start), page.revision)
            if page.previous_before is not None:
                meta["previous"] = _encode_continue(Position(before=page.previous_before), page.revision)
            return JSONResponse({**head, "metadata": meta, "items": items})
        page = await self._page(info.kind, where, STREAM_PAGE)
        page = await self._only_clusters(page, clusters)
        first = json.dumps({**head, "metadata": {"resourceVersion": str(page.revision)}})
        return StreamingResponse(self._stream_list(info.kind, page, selector, first[:-1], clusters),
                                 media_type="application/json")

    async def _collect(
        self, kind: str, where: Position, limit: int, selector: LabelSelector | None,
        clusters: frozenset[str] | None,
    ) -> tuple[store_mod.Page, list[dict[str, Any]]]:
        """One page of ``limit`` objects that the selector and the caller's clusters keep: read from the
        store in pages of ``limit`` until enough are found (fewer only at the end of the list)."""
        page = await self._only_clusters(await self._page(kind, where, limit), clusters)
        if selector is None and clusters is None:
            return page, await anyio.to_thread.run_sync(_wire_items, page, None)
        kept = [it for it in page.items if selector is None or selector.matches(it[0].metadata.labels)]
        back = where.before is not None
        edge = page.previous_before if back else page.next_start
        while len(kept) < limit and edge is not None:
            more = await self._page(kind, Position(before=edge) if back else Position(start=edge), limit,
                                    page.revision)
            more = await self._only_clusters(more, clusters)
            found = [it for it in more.items if selector is None or selector.matches(it[0].metadata.labels)]
            kept = found + kept if back else kept + found
            edge = more.previous_before if back else more.next_start
        if back:
            cut = kept[-limit:]
            previous = cut[0][0].metadata.name if (len(kept) > limit or edge is not None) and cut else None
            following = where.before
        else:
            cut = kept[:limit]
            previous = page.previous_before
            following = (cut[-1][0].metadata.name + "\0" if len(kept) > limit else edge) if cut else edge
        result = store_mod.Page(cut, page.revision, following, previous)
        return result, await anyio.to_thread.run_sync(_wire_items, result, None)

    async def _page(self, kind: str, where: Position, limit: int, revision: int | None = None) -> store_mod.Page:
        try:
            return await self.ctx.store.list_page(kind, start=where.start, before=where.before, limit=limit,
                                                  revision=where.revision if revision is None else revision)
        except store_mod.RevisionCompacted as e:
            raise ApiError(410, "Expired", "the list's revision was compacted meanwhile; list again from the "
                           "start (without continue)") from e

    async def _only_clusters(self, page: store_mod.Page, clusters: frozenset[str] | None) -> store_mod.Page:
        """The page's objects in ``clusters`` (per-cluster bindings only; None: all of them)."""
        if clusters is None:
            return page
        lookup = rbac.batch_lookup((), self.ctx.store)
        kept = [(o, st) for o, st in page.items if await rbac.object_cluster(o, lookup) in clusters]
        return dataclasses.replace(page, items=kept)

    async def _stream_list(
        self, kind: str, page: store_mod.Page, selector: LabelSelector | None, head: str,
        clusters: frozenset[str] | None,
    ) -> AsyncIterator[bytes]:
        yield (head + ', "items": [').encode()
        first = True
        while True:
            chunk = await anyio.to_thread.run_sync(_encode_items, page, selector, first)
            if chunk:
                first = False
                yield chunk
            if page.next_start is None:
                break
            page = await self.ctx.store.list_page(kind, start=page.next_start, limit=STREAM_PAGE,
                                                  revision=page.revision)
            page = await self._only_clusters(page, clusters)
        yield b"]}"

    async def _get_allowed(self, request: Request, info: KindInfo, name: str) -> Resource:
        """The object, if the caller may get it in its cluster (401, 403 or 404 otherwise)."""
        who = await self._authenticate(request)
        obj = await self.ctx.store.get(info.kind, name)
        cluster = await rbac.object_cluster(obj, rbac.batch_lookup((), self.ctx.store)) if obj else None
        if not authorize(self.ctx.authz, who, "get", info.kind, name, cluster):
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
        if not isinstance(body.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "metadata: expected an object")
        if applybody.meta_of(body).get("name", name) != name or body["kind"] != info.kind:
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
        if body["kind"] != info.kind:
            raise ApiError(400, "BadRequest", f"body is kind {body['kind']!r}; POST it to its own URL, not "
                           f"/api/v1/{info.plural}")
        return await self._write_one(request, body, create_only=True)

    async def _write_one(self, request: Request, body: dict[str, Any], *, create_only: bool) -> Response:
        who: Identity = request.state.identity
        (obj,) = _parse_objects([body])
        await self._check_paths([obj])
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
        existing = await self._readable(info.kind, name)
        if existing is not None:
            await self._authorize_changes(request, who, [_OneChange(info.kind, name, "deleted", existing, None)], [])
        elif not authorize(self.ctx.authz, who, "delete", info.kind, name):
            raise ApiError(403, "Forbidden", f"{who.name} may not delete {info.kind}/{name}")
        cid = _correlation_id(request)
        removed = await self.ctx.store.delete(
            info.kind, name, correlation_id=cid, resource_version=_revision_param(request),
            user=who.name,
        )
        if removed is None:
            raise ApiError(404, "NotFound", f"{info.kind} {name!r} not found")
        return JSONResponse(resource_to_wire(removed), headers={CORRELATION_HEADER: cid})

    async def apply(self, request: Request) -> Response:
        who = await self._authenticate(request)
        streamed = request.headers.get("content-type", "").split(";")[0].strip() == applybody.NDJSON
        if not streamed:
            body = await _json(request)
            if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
                raise ApiError(400, "BadRequest", 'expected {"objects": [...]}')
            objects = await anyio.to_thread.run_sync(_parse_objects, body["objects"])  # CPU: off the loop
            return await self._apply(request, who, body, objects, None, streamed=False)
        options = _apply_options(request)  # a bad option is refused before the body is read
        # Kinds with many objects are read from etcd while the rest of the stream arrives.
        prefetch = self.ctx.store.prefetch()
        try:
            objects = await _read_stream(request, prefetch)
            return await self._apply(request, who, options, objects, prefetch, streamed=True)
        finally:
            prefetch.cancel()  # done by now, or not needed any more (a refused or abandoned stream)

    async def _apply(
        self, request: Request, who: Identity, body: dict[str, Any], objects: list[Resource],
        prefetch: store_mod.Prefetch | None, *, streamed: bool,
    ) -> Response:
        dry_run = request.query_params.get("dryRun", "").lower() in ("1", "true", "all") or bool(body.get("dryRun"))
        request.state.audit_skip = dry_run  # a dry run writes nothing: not audited
        await self._check_paths(objects)
        prune = bool(body.get("prune"))
        source = body.get("source")
        if source is not None and (not isinstance(source, str) or not _SOURCE.match(source)):
            raise ApiError(400, "BadRequest", f"source: expected a name like 'examples' (letters, digits, ._-), "
                           f"got {str(source)[:60]!r}")
        if prune and not source:
            raise ApiError(400, "BadRequest", "prune needs a source (apply --prune --source NAME)")
        cid = _correlation_id(request)
        objects = [self._with_finalizers(o) for o in objects]
        result = None
        if not self.ctx.authz.allows_everything(who):
            # Check what would change (the same computation, not written), refusing the whole apply if any
            # object of it is forbidden, naming it.
            result = await self.ctx.store.apply(
                objects, correlation_id=cid, source=source, dry_run=True, prune=prune, user=who.name,
                prefetch=prefetch,
            )
            await self._authorize_changes(request, who, result.changes, objects)
        if result is None or not dry_run:
            result = await self.ctx.store.apply(
                objects, correlation_id=cid, source=source, dry_run=dry_run, prune=prune, user=who.name,
                prefetch=prefetch,
            )
        request.state.audit_objects = [f"{c.kind}/{c.name}" for c in result.changes if c.action != "unchanged"]
        plans = None
        if dry_run and self.ctx.plan_hook is not None and body.get("plan", True):
            plans = await self.ctx.plan_hook([c for c in result.changes if c.action != "unchanged"])
        if not dry_run:
            for change in result.changes:
                self.applied.inc(action=change.action)
        summary = {"revision": result.revision, "transactions": result.transactions, "dryRun": dry_run,
                   "correlationId": cid}
        # Specs before/after only for a dry run (what diff shows); an apply reports actions.
        changes = (_change_to_wire(c, plans, bodies=dry_run) for c in result.changes)
        if streamed and body.get("omitUnchanged"):
            # `diff` shows only what changes: unchanged objects are counted, not listed (10,000 lines less
            # to encode and read for an unchanged tree).
            summary["unchanged"] = sum(1 for c in result.changes if c.action == "unchanged")
            changes = (_change_to_wire(c, plans, bodies=dry_run) for c in result.changes if c.action != "unchanged")
        if streamed:
            return StreamingResponse(
                _threaded(applybody.ndjson_lines(summary, changes)), media_type=applybody.NDJSON,
                headers={CORRELATION_HEADER: cid},
            )
        return JSONResponse({**summary, "changes": list(changes)}, headers={CORRELATION_HEADER: cid})

    # --- streams --------------------------------------------------------------------------------

    async def watch(self, request: Request) -> Response:
        try:
            kinds = [resolve_kind(k).kind for k in request.query_params.get("kinds", "").split(",") if k]
        except UnknownKind as e:
            raise ApiError(400, "BadRequest", f"kinds: {e}") from e
        kinds = kinds or list(KINDS)
        for kind in kinds:
            await self._authorize(request, "watch", kind)
        parts = [p for p in request.query_params.get("parts", "spec,status").split(",") if p in ("spec", "status")]
        start = _revision_param(request)
        start_revision = start if start is not None else await self.ctx.store.revision() + 1
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
            obj = await self._readable(*involved)
            cluster = await rbac.object_cluster(obj, rbac.batch_lookup((), self.ctx.store)) if obj else None
        if not authorize(self.ctx.authz, who, "list", "Event", None, cluster):
            where = f" of {involved[0]}/{involved[1]}" if involved else ""
            raise ApiError(403, "Forbidden", f"{who.name} may not list Events{where}")
        cid = request.query_params.get("correlationId")
        limit = _int_param(request, "limit", 500, 1, 10_000)
        older = _decode_event_continue(request.query_params.get("continue"))
        events = await self.ctx.store.list_events(involved=involved, correlation_id=cid, limit=limit, before=older)
        if request.query_params.get("watch", "").lower() not in ("1", "true"):
            meta = {}
            if len(events) == limit:  # perhaps older ones: the next page ends before the oldest of these
                meta["continue"] = _encode_continue(Position(before=events[0].metadata.name), 1)
            return JSONResponse({"metadata": meta, "items": [e.model_dump(mode="json", exclude_none=True)
                                                              for e in events]})
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


_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
UNAUTHORIZED = "missing, invalid or expired bearer token (`virtplane login`, or the token `virtplane server` wrote)"
# Routes that need no credential (the guard still caps their bodies): a login is how one gets a token.
UNAUTHENTICATED = frozenset({"/api/v1/login"})


class _Guard:
    """Authentication from the headers alone, before any handler reads the body (401; the static token,
    a login session or a service-account token, resolved by ``ctx.authn`` -- the latter two are one etcd
    read), and the body cap: a Content-Length above it is 413 at once; a body that grows past it while
    being read stops the read (``BodyTooLarge`` -> 413 in the handler)."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app, self.ctx = app, ctx
        self._big: anyio.Semaphore | None = None  # made on first use, on the server's loop

    def _big_bodies(self) -> anyio.Semaphore:
        if self._big is None:
            self._big = anyio.Semaphore(BIG_BODIES_AT_ONCE)
        return self._big

    def _protected(self, path: str) -> bool:
        return path.startswith("/api/") or (path == "/metrics" and not self.ctx.metrics_public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        who = None
        if scope["path"] not in UNAUTHENTICATED:
            try:
                who = await self.ctx.authn.authenticate(headers.get(b"authorization", b"").decode("latin-1") or None)
            except store_mod.StoreUnavailable as e:  # sessions and tokens live in etcd
                await _reject(scope, receive, send, 503, "StoreUnavailable", str(e), {})
                return
            if who is None:
                response = await _reject(scope, receive, send, 401, "Unauthorized", UNAUTHORIZED,
                                         {"www-authenticate": "Bearer"})
                if self.ctx.audit and scope["method"] in ("POST", "PUT", "DELETE"):
                    await audit_mod.record(self.ctx.store, Request(scope), response, _route_of(scope))
                return
        limit = self.ctx.max_body_bytes
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > limit:
            await _reject(scope, receive, send, 413, "TooLarge", f"request body larger than {limit} bytes "
                          "(the server's limit); split the input", {}, limit=limit)
            return
        if who is not None:
            scope.setdefault("state", {})["identity"] = who
        if scope["method"] in ("POST", "PUT") and not (length.isdigit() and int(length) <= BIG_BODY):
            # Large (or unannounced) bodies take turns: eight 16 MiB applies at once would each hold the
            # body, its parse and its objects in memory together.
            async with self._big_bodies():
                await self._call(scope, receive, send, limit)
            return
        await self._call(scope, receive, send, limit)

    async def _call(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        seen = 0

        async def capped_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, capped_receive, send)


async def _reject(
    scope: Scope, receive: Receive, send: Send, code: int, reason: str, message: str, headers: dict[str, str],
    **details: Any,
) -> Response:
    response = JSONResponse(error_body(code, reason, message, **details), status_code=code, headers=headers)
    await response(scope, receive, send)
    return response


def _route_of(scope: Scope) -> str:
    """The route name of a write refused by the guard, for its audit record."""
    path, method = str(scope["path"]), str(scope["method"])
    if path.startswith("/api/v1/") and path[len("/api/v1/"):] in ("apply", "logout"):
        return path[len("/api/v1/"):]
    if path.startswith("/api/v1/tokens"):
        return "token-create" if method == "POST" else "token-revoke"
    return {"POST": "create", "PUT": "put", "DELETE": "delete"}[method]


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
    app = Starlette(routes=routes, middleware=[Middleware(_CorrelationEcho), Middleware(_Guard, ctx=ctx)])
    app.state.api = api  # for the web console (controller.ui), which calls these handlers in-process
    return app
