"""The OpenAPI 3.1 document served at /openapi.json, built from the kinds' JSON Schemas."""

from __future__ import annotations

from functools import cache
from typing import Any

from specs.kinds import KINDS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "integer"},
                        "reason": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "object"},
                    },
                }
            },
        },
    }
    paths: dict[str, Any] = {}
    errors = {
        str(c): {"description": d, "content": {"application/json": {"schema": _ref("Error")}}}
        for c, d in ((401, "Unauthorized"), (404, "Not found"), (409, "Conflict"), (422, "Invalid"))
    }
    for info in KINDS.values():
        schema = info.model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[info.kind] = schema
        one = {"content": {"application/json": {"schema": _ref(info.kind)}}}
        paths[f"/api/v1/{info.plural}"] = {
            "get": {
                "summary": f"List {info.plural}",
                "parameters": [
                    {"name": "labelSelector", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "description": "a page of at most this many (1-1000), by name",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "continue", "in": "query", "description": "the page after this name "
                     "(metadata.continue of the previous page)", "schema": {"type": "string"}},
                    {"name": "before", "in": "query", "description": "the page before this name "
                     "(metadata.previous of the next page)", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "List"}, **errors},
            },
            "post": {
                "summary": f"Create a {info.kind}",
                "requestBody": one,
                "responses": {"201": {"description": "Created", **one}, **errors},
            },
        }
        name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        paths[f"/api/v1/{info.plural}/{{name}}"] = {
            "parameters": [name_param],
            "get": {
                "summary": f"Get a {info.kind} with its status",
                "responses": {"200": {"description": "OK", **one}, **errors},
            },
            "put": {
                "summary": f"Create or replace a {info.kind} (metadata.resourceVersion is a precondition)",
                "requestBody": one,
                "responses": {"200": {"description": "Replaced", **one}, **errors},
            },
            "delete": {"summary": f"Delete a {info.kind}", "responses": {"200": {"description": "Deleted"}, **errors}},
        }
        paths[f"/api/v1/{info.plural}/{{name}}/status"] = {
            "parameters": [name_param],
            "get": {
                "summary": f"Status of a {info.kind} (read-only)",
                "responses": {"200": {"description": "OK"}, **errors},
            },
        }
    paths["/api/v1/apply"] = {
        "post": {
            "summary": "Apply many objects in one transaction; ?dryRun=true returns what would change",
            "responses": {"200": {"description": "Changes"}, **errors},
        }
    }
    paths["/api/v1/hosts/{name}/adopt"] = {
        "parameters": [name_param],
        "post": {
            "summary": "Objects reproducing foreign domains of a host ({domains: [...]} or {all: true}); "
            "read-only: the caller writes them to Git and applies them",
            "responses": {"200": {"description": "adopted: [{domain, objects}], refused: [{domain, problems}]"},
                          **errors},
        },
    }
    paths["/api/v1/backup"] = {
        "get": {"summary": "The whole store: specs with server metadata and statuses (no events, no leases)",
                "responses": {"200": {"description": "a virtplane.io/backup/v1 document"}, **errors}},
    }
    paths["/api/v1/restore"] = {
        "post": {"summary": "Load a backup into an empty store (409 if it is not empty; nothing written)",
                 "responses": {"200": {"description": "{restored: N}"}, **errors}},
    }
    paths["/api/v1/watch"] = {
        "get": {
            "summary": "JSON lines of changes from ?resourceVersion=",
            "responses": {"200": {"description": "application/x-ndjson stream"}},
        }
    }
    paths["/api/v1/events"] = {
        "get": {
            "summary": "Events (?for=Kind/name, ?correlationId=, ?watch=true)",
            "responses": {"200": {"description": "Events"}},
        }
    }
    ok = {"200": {"description": "OK"}, **errors}
    paths["/api/v1/login"] = {"post": {
        "summary": 'Directory login: {"username", "password"} -> a session token (401 refused, 503 directory down)',
        "security": [], "responses": ok}}
    paths["/api/v1/logout"] = {"post": {"summary": "Revoke the caller's session", "responses": ok}}
    paths["/api/v1/auth/whoami"] = {"get": {"summary": "The caller's user, groups and credential", "responses": ok}}
    paths["/api/v1/auth/can-i"] = {"get": {
        "summary": "?verb=&kind=&cluster= -> {allowed} for the caller", "responses": ok}}
    paths["/api/v1/tokens"] = {
        "get": {"summary": "Service-account API tokens (ids, never secrets)", "responses": ok},
        "post": {"summary": '{"account", "description"?, "ttlSeconds"?} -> a token, shown once', "responses": ok},
    }
    paths["/api/v1/tokens/{id}"] = {"delete": {"summary": "Revoke an API token", "responses": ok}}
    paths["/api/v1/audit"] = {"get": {
        "summary": "Audit records (?user=, ?since=ISO-8601, ?limit=), oldest first", "responses": ok}}
    for p in ("/healthz", "/readyz", "/metrics"):
        paths[p] = {"get": {"summary": p[1:], "security": [], "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "virtplane API", "version": "v1"},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
