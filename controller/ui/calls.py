"""In-process calls to the API's handlers, as the person whose session cookie came with the request.

``ApiCalls(api).call(request, "list", plural="virtualmachines", query={...})`` builds a request for the
handler with ``Authorization: Bearer <session>`` and answers ``(status code, JSON body)``: the console
asks the API what it would answer that person, so it cannot disagree with it on roles or on data. The
calls go through the API's route wrapper: the same metrics, and writes are audited like the CLI's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message

from controller.common.wire import CORRELATION_HEADER

if TYPE_CHECKING:
    from controller.api.app import Api

Endpoint = Callable[[Request], Awaitable[Response]]


class ApiCalls:
    def __init__(self, api: Api) -> None:
        from controller.api.identity import IdentityRoutes

        identity = IdentityRoutes(api)
        r = api.route
        self.api = api
        self.endpoints: dict[str, tuple[str, str, Endpoint]] = {
            # name: (method, path template, endpoint wrapped like the API's own route)
            "list": ("GET", "/api/v1/{plural}", r("list", api.list_objects)),
            "get": ("GET", "/api/v1/{plural}/{name}", r("get", api.get_object)),
            "put": ("PUT", "/api/v1/{plural}/{name}", r("put", api.put_object)),
            "apply": ("POST", "/api/v1/apply", r("apply", api.apply)),
            "events": ("GET", "/api/v1/events", r("events", api.events)),
            "watch": ("GET", "/api/v1/watch", r("watch", api.watch)),
            "login": ("POST", "/api/v1/login", r("login", identity.login)),
            "logout": ("POST", "/api/v1/logout", r("logout", identity.logout)),
            "whoami": ("GET", "/api/v1/auth/whoami", r("whoami", identity.whoami)),
            "can-i": ("GET", "/api/v1/auth/can-i", r("can-i", identity.can_i)),
        }

    def _request(self, request: Request, name: str, secret: str | None, query: dict[str, str] | None,
                 body: Any, path_params: dict[str, str]) -> tuple[Request, Endpoint]:
        method, template, endpoint = self.endpoints[name]
        path = template.format(**path_params)
        headers = [(b"content-type", b"application/json")]
        if secret:
            headers.append((b"authorization", f"Bearer {secret}".encode()))
        cid = request.headers.get(CORRELATION_HEADER)
        if cid:
            headers.append((CORRELATION_HEADER.lower().encode(), cid.encode()))
        raw = json.dumps(body).encode() if body is not None else b""
        scope = {
            "type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": urlencode(query or {}).encode(), "headers": headers, "path_params": path_params,
            "client": request.scope.get("client"), "server": request.scope.get("server"),
            "scheme": request.scope.get("scheme", "http"), "http_version": "1.1",
        }
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:  # a streaming handler waits here until the browser goes away
                return await request.receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        return Request(scope, receive), endpoint

    async def call(self, request: Request, name: str, secret: str | None, /, *, query: dict[str, str] | None = None,
                   body: Any = None, **path_params: str) -> tuple[int, Any]:
        inner, endpoint = self._request(request, name, secret, query, body, path_params)
        response = await endpoint(inner)
        if isinstance(response, StreamingResponse):  # a whole list, streamed in pages: one value in the end
            chunks = [c if isinstance(c, bytes) else str(c).encode() async for c in response.body_iterator]
            return response.status_code, json.loads(b"".join(chunks))
        return response.status_code, json.loads(bytes(response.body)) if response.body else None

    async def stream(self, request: Request, name: str, secret: str | None, *,
                     query: dict[str, str] | None = None) -> tuple[int, Any, AsyncIterator[bytes] | None]:
        """A streaming handler's lines (bytes, one JSON value each), or its error body."""
        inner, endpoint = self._request(request, name, secret, query, None, {})
        response = await endpoint(inner)
        if isinstance(response, StreamingResponse):
            return response.status_code, None, _lines(response.body_iterator)
        return response.status_code, json.loads(bytes(response.body)), None


async def _lines(chunks: AsyncIterable[Any]) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in chunks:
        buffer += chunk if isinstance(chunk, bytes) else str(chunk).encode()
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line:
                yield line
