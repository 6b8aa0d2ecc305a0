"""Python SDK: a small synchronous client for the virtplane API.

    from controller.client.sdk import Client
    with Client.from_config() as vp:
        for vm in vp.list("vm"):
            print(vm["metadata"]["name"], vm.get("status", {}).get("phase"))

Errors::

    ApiError(code, reason, message, details)
    ├── Conflict      409: lost a compare-and-swap, or the object already exists
    ├── NotFound      404
    ├── Invalid       422: validation problems in details["problems"]
    ├── Unauthorized  401
    ├── Forbidden     403: details["denied"] names each object the caller may not write
    └── Unavailable   503: etcd or the directory cannot be reached
    ServerUnreachable: nothing answered at the server URL
"""

from __future__ import annotations

import builtins
import json
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from controller.client.config import load_client_config
from controller.client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    ServerUnreachable,
    Unauthorized,
    Unavailable,
)
from controller.common.wire import CORRELATION_HEADER

_BY_CODE: dict[int, type[ApiError]] = {
    409: Conflict, 404: NotFound, 422: Invalid, 401: Unauthorized, 403: Forbidden, 503: Unavailable,
}


LIST_PAGE = 1000  # objects per list request
STREAM_CHUNK = 64 * 1024  # bytes of NDJSON per chunk of a streamed apply
NDJSON = "application/x-ndjson"


def _raise_for(response: httpx.Response) -> None:
    """The error an answer of 400 and above stands for (its body read)."""
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(response.status_code, "Error", response.text) from None
    raise _BY_CODE.get(err["code"], ApiError)(err["code"], err["reason"], err["message"], err.get("details"))


class Client:
    """``ca``: a PEM file the server's certificate must chain to (https); None: the system's trust store."""

    def __init__(self, server: str, token: str | None, *, timeout: float = 120.0, ca: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
        if server.startswith("http://"):
            verify = False  # no TLS to verify: skip loading the trust store (~20 ms of every command)
        self._http = httpx.Client(base_url=server, headers=headers, timeout=timeout, verify=verify)

    @classmethod
    def from_config(cls, server: str | None = None, token: str | None = None, ca: str | None = None) -> Client:
        config = load_client_config(server, token, ca)
        return cls(config.server, config.token, ca=config.ca)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---

    def _unreachable(self, e: httpx.TransportError) -> ServerUnreachable:
        if "CERTIFICATE_VERIFY_FAILED" in str(e):
            return ServerUnreachable(
                f"the certificate of {self.server} is not trusted by the CA in the CLI config "
                f"(`ca`, --ca or VIRTPLANE_CA): {e}"
            )
        return ServerUnreachable(f"cannot reach the virtplane server at {self.server}: {e}")

    def _request(self, method: str, path: str, *, correlation_id: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {CORRELATION_HEADER: correlation_id} if correlation_id else {}
        headers |= kwargs.pop("headers", None) or {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        _raise_for(response)
        return response

    # --- objects ---

    def list(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        return self.list_at(kind, selector)[0]

    def list_at(
        self, kind: str, selector: str | None = None, *, page_size: int = LIST_PAGE
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        """The objects and the store revision they were read at: ``watch(resource_version=revision + 1)``
        then misses nothing and repeats nothing. Read in pages of ``page_size`` (``limit`` + ``continue``),
        every page at the first one's revision."""
        items: builtins.list[dict[str, Any]] = []
        revision = 0
        for page_items, page_revision in self.pages(kind, selector, page_size=page_size):
            items.extend(page_items)
            revision = page_revision
        return items, revision

    def pages(
        self, kind: str, selector: str | None = None, *, page_size: int = LIST_PAGE
    ) -> Iterator[tuple[builtins.list[dict[str, Any]], int]]:
        """Each page of a list as (items, revision), following ``continue`` until the last."""
        params: dict[str, str] = {"limit": str(page_size)}
        if selector:
            params["labelSelector"] = selector
        while True:
            body = self._request("GET", f"/api/v1/{kind}", params=params).json()
            yield body["items"], int(body["metadata"]["resourceVersion"])
            token = body["metadata"].get("continue")
            if not token:
                return
            params["continue"] = token

    def get(self, kind: str, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self._request("GET", f"/api/v1/{kind}/{name}").json()
        return body

    def put(self, obj: dict[str, Any], *, correlation_id: str | None = None) -> dict[str, Any]:
        kind, name = obj["kind"], obj["metadata"]["name"]
        body: dict[str, Any] = self._request(
            "PUT", f"/api/v1/{kind}/{name}", json=obj, correlation_id=correlation_id
        ).json()
        return body

    def delete(self, kind: str, name: str, *, correlation_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = self._request("DELETE", f"/api/v1/{kind}/{name}", correlation_id=correlation_id).json()
        return body

    def apply(
        self,
        objects: Sequence[dict[str, Any] | bytes],
        *,
        dry_run: bool = False,
        prune: bool = False,
        source: str | None = None,
        correlation_id: str | None = None,
        plan: bool = True,
    ) -> dict[str, Any]:
        # Objects may come pre-serialized (bytes): the body is assembled without re-encoding them.
        head = json.dumps({"prune": prune, "source": source, "plan": plan}).encode()
        parts = [o if isinstance(o, bytes) else json.dumps(o).encode() for o in objects]
        content = head[:-1] + b', "objects": [' + b",".join(parts) + b"]}"
        body: dict[str, Any] = self._request(
            "POST",
            "/api/v1/apply",
            params={"dryRun": "true"} if dry_run else None,
            content=content,
            correlation_id=correlation_id,
        ).json()
        return body

    def apply_stream(
        self,
        objects: Iterable[bytes],
        *,
        dry_run: bool = False,
        prune: bool = False,
        source: str | None = None,
        correlation_id: str | None = None,
        plan: bool = True,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        omit_unchanged: bool = False,
    ) -> dict[str, Any]:
        """``apply`` of objects given as JSON (bytes, one object each) while they are produced: the
        request is sent as NDJSON as ``objects`` yields them, so the server validates the first ones while
        the caller still reads and parses the rest. If ``objects`` raises, the request is abandoned and the
        server writes nothing. Returns what ``apply`` returns; ``on_change`` sees each change as it arrives.
        ``omit_unchanged``: unchanged objects are only counted (``unchanged`` in the result), not listed."""

        def body() -> Iterator[bytes]:
            count, chunk, size = 0, [], 0
            for obj in objects:
                count += 1
                chunk.append(obj)
                size += len(obj)
                if size >= STREAM_CHUNK:
                    yield b"\n".join(chunk) + b"\n"
                    chunk, size = [], 0
            chunk.append(json.dumps({"end": count}).encode())
            yield b"\n".join(chunk) + b"\n"

        params = {"dryRun": str(dry_run).lower(), "prune": str(prune).lower(), "plan": str(plan).lower(),
                  "omitUnchanged": str(omit_unchanged).lower()}
        if source is not None:
            params["source"] = source
        headers = {"Content-Type": NDJSON}
        if correlation_id:
            headers[CORRELATION_HEADER] = correlation_id
        try:
            with self._http.stream("POST", "/api/v1/apply", params=params, content=body(), headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                changes: builtins.list[dict[str, Any]] = []
                summary: dict[str, Any] = {}
                for line in response.iter_lines():
                    if not line:
                        continue
                    item = orjson.loads(line)
                    if "change" in item:
                        changes.append(item["change"])
                        if on_change is not None:
                            on_change(item["change"])
                    elif "summary" in item:
                        summary = item["summary"]
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        if not summary:
            raise ApiError(502, "Incomplete", "the server's answer ended before its summary line")
        return {**summary, "changes": changes}

    def upload(self, disk: str, path: Path, progress: Callable[[int], None] | None = None) -> int:
        """Stream the image at ``path`` to the server for Disk ``disk``; ``progress(bytes sent so far)``."""

        def chunks() -> Iterator[bytes]:
            sent = 0
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent)

        size = path.stat().st_size
        response = self._request("PUT", f"/api/v1/disks/{disk}/upload", content=chunks(),
                                 headers={"Content-Length": str(size)}, timeout=None)
        return int(response.json()["bytes"])

    def backup(self) -> dict[str, Any]:
        """The whole store as a ``virtplane.io/backup/v1`` document."""
        body: dict[str, Any] = self._request("GET", "/api/v1/backup").json()
        return body

    def restore(self, backup: dict[str, Any]) -> int:
        """Load a backup into an empty store; the number of objects restored."""
        return int(self._request("POST", "/api/v1/restore", json=backup).json()["restored"])

    def adopt(self, host: str, domains: Sequence[str] = (), *, everything: bool = False) -> dict[str, Any]:
        """Objects reproducing foreign domains of ``host`` (read-only): ``{"adopted": [{"domain", "objects"}],
        "refused": [{"domain", "problems"}]}``."""
        body: dict[str, Any] = self._request(
            "POST", f"/api/v1/hosts/{host}/adopt", json={"domains": list(domains), "all": everything}
        ).json()
        return body

    def events(
        self, *, involved: str | None = None, correlation_id: str | None = None, limit: int = 500,
        all_pages: bool = False,
    ) -> builtins.list[dict[str, Any]]:
        """The newest ``limit`` events, oldest first; ``all_pages``: every stored one, following
        ``metadata.continue`` to older pages."""
        params: dict[str, Any] = {k: v for k, v in (("for", involved), ("correlationId", correlation_id)) if v}
        params["limit"] = limit
        pages: builtins.list[builtins.list[dict[str, Any]]] = []
        while True:
            body = self._request("GET", "/api/v1/events", params=params).json()
            pages.append(body["items"])
            token = (body.get("metadata") or {}).get("continue")
            if not all_pages or not token:
                return [e for page in reversed(pages) for e in page]
            params["continue"] = token

    # --- identity ---

    def login(self, username: str, password: str) -> dict[str, Any]:
        """A new session: {"token", "id", "user", "groups", "expires"}."""
        body: dict[str, Any] = self._request(
            "POST", "/api/v1/login", json={"username": username, "password": password}
        ).json()
        return body

    def logout(self) -> dict[str, Any]:
        body: dict[str, Any] = self._request("POST", "/api/v1/logout").json()
        return body

    def whoami(self) -> dict[str, Any]:
        body: dict[str, Any] = self._request("GET", "/api/v1/auth/whoami").json()
        return body

    def can_i(self, verb: str, kind: str, cluster: str | None = None) -> dict[str, Any]:
        params = {"verb": verb, "kind": kind} | ({"cluster": cluster} if cluster else {})
        body: dict[str, Any] = self._request("GET", "/api/v1/auth/can-i", params=params).json()
        return body

    def create_token(self, account: str, description: str = "", ttl: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"account": account, "description": description}
        if ttl:
            payload["ttlSeconds"] = ttl
        body: dict[str, Any] = self._request("POST", "/api/v1/tokens", json=payload).json()
        return body

    def list_tokens(self) -> builtins.list[dict[str, Any]]:
        items: builtins.list[dict[str, Any]] = self._request("GET", "/api/v1/tokens").json()["items"]
        return items

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._request("DELETE", f"/api/v1/tokens/{token_id}").json()
        return body

    def audit(
        self, *, user: str | None = None, since: str | None = None, limit: int = 500
    ) -> builtins.list[dict[str, Any]]:
        params = {k: v for k, v in (("user", user), ("since", since), ("limit", str(limit))) if v}
        items: builtins.list[dict[str, Any]] = self._request("GET", "/api/v1/audit", params=params).json()["items"]
        return items

    # --- streams ---

    def _lines(self, path: str, params: dict[str, str], timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """JSON lines of a stream; ``timeout``: seconds the stream may stay silent (ServerUnreachable saying
        "timed out" after that), None: forever."""
        try:
            with self._http.stream("GET", path, params=params, timeout=httpx.Timeout(10.0, read=timeout)) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.TimeoutException as e:
            raise ServerUnreachable(f"the watch stream from {self.server} timed out: {e}") from e
        except httpx.TransportError as e:
            raise ServerUnreachable(f"lost the watch stream from {self.server}: {e}") from e

    def watch(
        self, kinds: Sequence[str] = (), resource_version: int | None = None, *, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """Changes from ``resource_version``: {type, kind, name, part (spec|status), revision, object};
        ``timeout``: seconds without a change before it stops (ServerUnreachable), None: never."""
        params = {"kinds": ",".join(kinds)}
        if resource_version is not None:
            params["resourceVersion"] = str(resource_version)
        return self._lines("/api/v1/watch", params, timeout)

    def watch_events(
        self, *, involved: str | None = None, correlation_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in (("for", involved), ("correlationId", correlation_id)) if v}
        params["watch"] = "true"
        return self._lines("/api/v1/events", params)
