"""The console's routes (see ``controller.ui``): login, pages, the two actions, the live stream."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from controller.ui import live, pages
from controller.ui.calls import ApiCalls
from controller.ui.render import STATIC, env
from controller.ui.session import (
    clear_session_cookie,
    csrf_ok,
    csrf_token,
    session_secret,
    set_session_cookie,
)
from reconcilers.snapshot.plan import REVERT_ANNOTATION  # the one `virtplane snapshot revert` sets

if TYPE_CHECKING:
    from controller.api.app import Api



class Console:
    def __init__(self, api: Api) -> None:
        self.calls = ApiCalls(api)
        self.session_ttl = api.ctx.session_ttl

    # --- plumbing -------------------------------------------------------------------------------

    async def page(self, request: Request, template: str, code: int = 200, **values: Any) -> HTMLResponse:
        secret = session_secret(request)
        values.setdefault("user", getattr(request.state, "console_user", None))
        html = env.get_template(template).render(csrf=csrf_token(secret) if secret else "", request=request,
                                                 **values)
        return HTMLResponse(html, status_code=code, headers={"Cache-Control": "no-store"})

    async def signed_in(self, request: Request) -> str | Response:
        """The session secret, or a redirect to the login page (the session expired or was revoked)."""
        secret = session_secret(request)
        if secret:
            code, body = await self.calls.call(request, "whoami", secret)
            if code == 200:
                request.state.console_user = body
                return secret
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
        if secret:
            clear_session_cookie(response, request)
        return response

    async def error(self, request: Request, code: int, body: Any) -> HTMLResponse:
        error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
        return await self.page(request, "error.html", code=code, code_text=code,
                               reason=error.get("reason", ""), message=error.get("message", str(body)),
                               details=error)

    async def form(self, request: Request, secret: str) -> dict[str, str] | Response:
        """The posted form, if its CSRF token belongs to this session (403 otherwise)."""
        fields = await read_form(request)
        if not csrf_ok(secret, fields.get("csrf")):
            return await self.error(request, 403, {"error": {
                "reason": "CsrfRejected",
                "message": "this form is not from your console session (missing or wrong CSRF token); "
                           "reload the page and try again"}})
        return fields

    # --- login ----------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return await self.page(request, "login.html", next=_safe_next(request.query_params.get("next")),
                               message="")

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        username, password = form.get("username", ""), form.get("password", "")
        target = _safe_next(form.get("next"))
        if not username or not password:
            return await self.page(request, "login.html", code=400, next=target,
                                   message="Enter a user name and a password.")
        code, body = await self.calls.call(request, "login", None, body={"username": username, "password": password})
        del password, form
        if code != 200:
            message = (body or {}).get("error", {}).get("message", "login refused")
            return await self.page(request, "login.html", code=code, next=target, message=message,
                                   username=username)
        response = RedirectResponse(target, status_code=303)
        set_session_cookie(response, request, body["token"], self.session_ttl)
        return response

    async def logout(self, request: Request) -> Response:
        secret = session_secret(request)
        if secret:
            fields = await self.form(request, secret)
            if isinstance(fields, Response):
                return fields
            await self.calls.call(request, "logout", secret)
        response = RedirectResponse("/ui/login?loggedOut=1", status_code=303)
        clear_session_cookie(response, request)
        return response

    # --- actions (one-shot requests, as the CLI makes them) ----------------------------------------

    async def posted(self, request: Request) -> tuple[str, dict[str, str]] | Response:
        """A write from a console form: the session and the form, or the login page / a CSRF refusal."""
        secret = await self.signed_in(request)
        if isinstance(secret, Response):
            return secret
        fields = await self.form(request, secret)
        return fields if isinstance(fields, Response) else (secret, fields)

    async def migrate(self, request: Request) -> Response:
        posted = await self.posted(request)
        if isinstance(posted, Response):
            return posted
        secret, fields = posted
        vm = request.path_params["name"]
        name = f"{vm}-{secrets.token_hex(3)}"  # like `virtplane migrate`
        spec: dict[str, Any] = {"vm": vm}
        if fields.get("targetHost"):
            spec["targetHost"] = fields["targetHost"]
        code, body = await self.calls.call(
            request, "put", secret, plural="migrations", name=name,
            body={"apiVersion": "virtplane.io/v1", "kind": "Migration", "metadata": {"name": name}, "spec": spec})
        if code >= 300:
            return await self.error(request, code, body)
        return RedirectResponse(f"/ui/migrations/{quote(name)}", status_code=303)

    async def revert(self, request: Request) -> Response:
        posted = await self.posted(request)
        if isinstance(posted, Response):
            return posted
        secret = posted[0]
        name = request.path_params["name"]
        code, body = await self.calls.call(request, "get", secret, plural="snapshots", name=name)
        if code != 200:
            return await self.error(request, code, body)
        requested = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta = {k: v for k, v in body["metadata"].items() if k in ("name", "labels", "annotations",
                                                                  "resourceVersion")}
        meta["annotations"] = {**(meta.get("annotations") or {}), REVERT_ANNOTATION: requested}
        put = {"apiVersion": body["apiVersion"], "kind": "Snapshot", "metadata": meta, "spec": body["spec"]}
        code, answer = await self.calls.call(request, "put", secret, plural="snapshots", name=name, body=put)
        if code >= 300:
            return await self.error(request, code, answer)
        return RedirectResponse(f"/ui/snapshots/{quote(name)}?" + urlencode({"reverted": requested}), status_code=303)

    def routes(self) -> list[BaseRoute]:
        p = pages.Pages(self)
        return [
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", p.overview, methods=["GET"]),
            Route("/events", p.events, methods=["GET"]),
            Route("/diff", p.diff_form, methods=["GET"]),
            Route("/diff", p.diff, methods=["POST"]),
            Route("/stream", live.Stream(self).endpoint, methods=["GET"]),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
            Route("/virtualmachines/{name}/migrate", self.migrate, methods=["POST"]),
            Route("/snapshots/{name}/revert", self.revert, methods=["POST"]),
            Route("/{plural}/", p.listing, methods=["GET"]),
            Route("/{plural}/{name}", p.detail, methods=["GET"]),
        ]


MAX_FORM_BYTES = 1 << 20


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the only kind the console's forms send), first value
    of each field; at most 1 MiB."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    fields: dict[str, str] = {}
    for key, value in pairs:
        fields.setdefault(key, value)
    return fields


def _safe_next(value: object) -> str:
    """Only a console path: a login never sends anyone to another site."""
    if isinstance(value, str) and value.startswith("/ui/") and not value.startswith("//"):
        return value
    return "/ui/"


def console_routes(api: Api) -> list[BaseRoute]:
    """``/`` redirects to the console; ``/ui/...`` is the console."""

    async def root(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    async def ui_root(request: Request) -> Response:
        return RedirectResponse("/ui/", status_code=307)

    return [Route("/", root), Route("/ui", ui_root), Mount("/ui", routes=Console(api).routes())]
