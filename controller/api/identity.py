"""Login, logout, "can I", API tokens and the audit log over HTTP.

Routes::

    POST   /api/v1/login            {"username", "password"} -> {"token", "id", "user", "groups", "expires"}
                                    401 refused (wrong password, unknown or locked user: the same answer;
                                    the typed reason goes to the audit log), 503 directory unavailable,
                                    501 no directory configured
    POST   /api/v1/logout           revoke the caller's session
    GET    /api/v1/auth/whoami      {"user", "groups", "credential"}
    GET    /api/v1/auth/can-i       ?verb=&kind=&cluster= -> {"allowed": bool, ...}
    POST   /api/v1/tokens           {"account", "description"?, "ttlSeconds"?} -> {"token", "id", ...}
                                    (create ApiToken)
    GET    /api/v1/tokens           list (list ApiToken)
    DELETE /api/v1/tokens/{id}      revoke (delete ApiToken)
    GET    /api/v1/audit            ?user=&since=ISO-8601&limit= (list AuditRecord)

The password is read from the body, handed to the directory client and dropped; it is never logged,
stored, or echoed (tests/controller/api/test_identity.py looks for it everywhere).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.adapters.directory import AuthenticationFailed, DirectoryUnavailable
from controller.api.auth import authorize
from controller.api.sessions import bearer
from controller.store import AuditRecord, SessionRecord, TokenRecord
from specs.kinds import UnknownKind, resolve_kind
from specs.rbac import PSEUDO_KINDS, VERBS

if TYPE_CHECKING:
    from controller.api.app import Api

_ACCOUNT = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _session_wire(secret: str | None, record: SessionRecord) -> dict[str, Any]:
    body: dict[str, Any] = {"id": record.id, "user": record.user, "groups": list(record.groups),
                            "expires": record.expires.isoformat(), "created": record.created.isoformat()}
    if secret is not None:
        body["token"] = secret
    return body


def _token_wire(secret: str | None, record: TokenRecord) -> dict[str, Any]:
    body: dict[str, Any] = {"id": record.id, "account": record.account, "description": record.description,
                            "created": record.created.isoformat(),
                            "expires": record.expires.isoformat() if record.expires else None}
    if secret is not None:
        body["token"] = secret
    return body


class IdentityRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.ctx = api.ctx
        self.logins = api.ctx.metrics.counter("virtplane_logins_total", "Directory logins by outcome.")

    async def login(self, request: Request) -> Response:
        from controller.api.app import ApiError, _json

        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("username"), str) \
                or not isinstance(body.get("password"), str):
            raise ApiError(400, "BadRequest", 'expected {"username": ..., "password": ...}')
        username, password = body["username"], body["password"]
        del body
        request.state.audit_user = username[:256]
        if self.ctx.directory is None:
            raise ApiError(501, "NotConfigured", "this server has no directory: start it with --directory FILE "
                                                 "(see docs/identity.md); API tokens still work")
        try:
            user = await self.ctx.directory.authenticate(username, password)
        except AuthenticationFailed as e:
            request.state.audit_reason = getattr(getattr(e, "reason", None), "value", "refused")
            self.logins.inc(outcome="refused")
            raise ApiError(401, "LoginFailed", "login refused: wrong username or password, "
                                               "or the account cannot log in") from None
        except DirectoryUnavailable as e:
            request.state.audit_reason = f"directory-{e.reason.value}"
            self.logins.inc(outcome="unavailable")
            raise ApiError(503, "DirectoryUnavailable",
                           f"the directory cannot be reached ({e.reason.value}); try again later. "
                           "API tokens and the server's static token still work") from None
        address = request.client.host if request.client else ""
        secret, record = await self.ctx.store.identities.create_session(
            user.name, tuple(sorted(user.groups)), self.ctx.session_ttl, address
        )
        request.state.audit_user = user.name
        request.state.audit_objects = [f"Session/{record.id}"]
        self.logins.inc(outcome="ok")
        return JSONResponse(_session_wire(secret, record))

    async def logout(self, request: Request) -> Response:
        from controller.api.app import ApiError

        who = await self.api._authenticate(request)
        secret = bearer(request.headers.get("authorization"))
        if not who.credential.startswith("session:") or secret is None:
            raise ApiError(400, "BadRequest", f"{who.name} is not logged in with a session (credential "
                                              f"{who.credential}); nothing to log out")
        record = await self.ctx.store.identities.revoke_session(secret)
        request.state.audit_objects = [f"Session/{who.credential.partition(':')[2]}"]
        return JSONResponse({"loggedOut": record.id if record else None})

    async def whoami(self, request: Request) -> Response:
        who = await self.api._authenticate(request)
        return JSONResponse({"user": who.name, "groups": sorted(who.groups), "credential": who.credential})

    async def can_i(self, request: Request) -> Response:
        from controller.api.app import ApiError

        who = await self.api._authenticate(request)
        verb = request.query_params.get("verb", "")
        kind_text = request.query_params.get("kind", "")
        cluster = request.query_params.get("cluster") or None
        if verb not in VERBS:
            raise ApiError(400, "BadRequest", f"verb {verb!r}: expected one of {', '.join(VERBS)}")
        if kind_text in PSEUDO_KINDS:
            kind = kind_text
        else:
            try:
                kind = resolve_kind(kind_text).kind
            except UnknownKind as e:
                raise ApiError(400, "BadRequest", str(e)) from e
        allowed = authorize(self.ctx.authz, who, verb, kind, None, cluster)
        return JSONResponse({"allowed": allowed, "user": who.name, "groups": sorted(who.groups),
                             "verb": verb, "kind": kind, "cluster": cluster})

    async def create_token(self, request: Request) -> Response:
        from controller.api.app import ApiError, _json

        await self.api._authorize(request, "create", "ApiToken")
        body = await _json(request)
        account = body.get("account") if isinstance(body, dict) else None
        if not isinstance(account, str) or not _ACCOUNT.match(account) or len(account) > 63:
            raise ApiError(400, "BadRequest", "account: expected a service account name (lower-case letters, "
                                              "digits and '-')")
        ttl = body.get("ttlSeconds")
        if ttl is not None and (not isinstance(ttl, int) or ttl <= 0):
            raise ApiError(400, "BadRequest", "ttlSeconds: expected a positive whole number of seconds")
        secret, record = await self.ctx.store.identities.create_token(account, str(body.get("description", "")), ttl)
        request.state.audit_verb = "token-create"
        request.state.audit_objects = [f"ApiToken/{record.id}"]
        return JSONResponse(_token_wire(secret, record), status_code=201)

    async def list_tokens(self, request: Request) -> Response:
        await self.api._authorize(request, "list", "ApiToken")
        return JSONResponse({"items": [_token_wire(None, t) for t in await self.ctx.store.identities.list_tokens()]})

    async def revoke_token(self, request: Request) -> Response:
        from controller.api.app import ApiError

        await self.api._authorize(request, "delete", "ApiToken")
        token_id = request.path_params["id"]
        request.state.audit_verb = "token-revoke"
        request.state.audit_objects = [f"ApiToken/{token_id}"]
        record = await self.ctx.store.identities.revoke_token(token_id)
        if record is None:
            raise ApiError(404, "NotFound", f"no API token with id {token_id!r}")
        return JSONResponse(_token_wire(None, record))

    async def audit(self, request: Request) -> Response:
        from controller.api.app import ApiError

        await self.api._authorize(request, "list", "AuditRecord")
        since = None
        if request.query_params.get("since"):
            try:
                since = datetime.fromisoformat(request.query_params["since"])
            except ValueError as e:
                raise ApiError(400, "BadRequest", f"since: expected an ISO-8601 time: {e}") from e
        try:
            limit = int(request.query_params.get("limit", "500"))
        except ValueError as e:
            raise ApiError(400, "BadRequest", "limit: expected a number") from e
        records: list[AuditRecord] = await self.ctx.store.audit.query(
            user=request.query_params.get("user") or None, since=since, limit=limit
        )
        return JSONResponse({"items": [r.to_wire() for r in records]})

    def routes(self) -> list[Route]:
        r = self.api.route
        return [
            Route("/api/v1/login", r("login", self.login), methods=["POST"]),
            Route("/api/v1/logout", r("logout", self.logout), methods=["POST"]),
            Route("/api/v1/auth/whoami", r("whoami", self.whoami), methods=["GET"]),
            Route("/api/v1/auth/can-i", r("can-i", self.can_i), methods=["GET"]),
            Route("/api/v1/tokens", r("token-create", self.create_token), methods=["POST"]),
            Route("/api/v1/tokens", r("token-list", self.list_tokens), methods=["GET"]),
            Route("/api/v1/tokens/{id}", r("token-revoke", self.revoke_token), methods=["DELETE"]),
            Route("/api/v1/audit", r("audit", self.audit), methods=["GET"]),
        ]
