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
    schemas["Object"] = {  # what the server answers: the kind's fields, status, server-set metadata
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                       "metadata": {"type": "object"}, "spec": {}, "status": {"type": "object"}},
    }
    schemas["List"] = {
        "type": "object",
        "required": ["kind", "metadata", "items"],
        "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                       "metadata": {"type": "object", "properties": {
                           "resourceVersion": {"type": "string"}, "continue": {"type": "string"},
                           "previous": {"type": "string"}, "total": {"type": "integer"}}},
                       "items": {"type": "array", "items": _ref("Object")}},
    }
    schemas["ApplyRequest"] = {
        "type": "object",
        "required": ["objects"],
        "properties": {
            "objects": {"type": "array", "items": {"type": "object"}},
            "prune": {"type": "boolean"},
            "source": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"},
            "dryRun": {"type": "boolean"},
            "plan": {"type": "boolean"},
        },
    }
    paths: dict[str, Any] = {}
    codes = ((400, "Bad request (not JSON, bad parameter)"), (401, "No or wrong bearer token"),
             (403, "Not allowed"), (404, "Not found"), (409, "Conflict"), (410, "Expired continue token"),
             (413, "Body over the server's limit"), (422, "Invalid object(s)"), (501, "Not configured (no directory)"),
             (503, "etcd unavailable (or the directory, at login)"))
    err = {str(c): {"description": d, "content": {"application/json": {"schema": _ref("Error")}}} for c, d in codes}

    def errors(*which: int) -> dict[str, Any]:
        return {str(c): err[str(c)] for c in (401, 403, 503, *which)}

    obj = {"content": {"application/json": {"schema": _ref("Object")}}}
    query = [
        {"name": "labelSelector", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "description": "one page of at most this many, by name (without it: "
         "the whole list, streamed)", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
        {"name": "continue", "in": "query", "description": "a token from metadata.continue (the next page) or "
         "metadata.previous (the page before) of a page; every page is read at the first page's revision",
         "schema": {"type": "string"}},
    ]
    for info in KINDS.values():
        schema = info.model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[info.kind] = schema
        one = {"required": True, "content": {"application/json": {"schema": _ref(info.kind)}}}
        paths[f"/api/v1/{info.plural}"] = {
            "get": {
                "summary": f"List {info.plural}: one page with ?limit (and ?continue), else all, streamed",
                "parameters": query,
                "responses": {"200": {"description": "List", "content": {"application/json": {
                    "schema": _ref("List")}}}, **errors(400, 404, 410)},
            },
            "post": {
                "summary": f"Create a {info.kind}",
                "requestBody": one,
                "responses": {"201": {"description": "Created", **obj}, **errors(400, 404, 409, 413, 422)},
            },
        }
        name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        paths[f"/api/v1/{info.plural}/{{name}}"] = {
            "parameters": [name_param],
            "get": {
                "summary": f"Get a {info.kind} with its status",
                "responses": {"200": {"description": "OK", **obj}, **errors(404, 422)},
            },
            "put": {
                "summary": f"Create or replace a {info.kind} (metadata.resourceVersion is a precondition)",
                "requestBody": one,
                "responses": {"200": {"description": "Replaced", **obj}, "201": {"description": "Created", **obj},
                              **errors(400, 404, 409, 413, 422)},
            },
            "delete": {
                "summary": f"Delete a {info.kind}",
                "parameters": [{"name": "resourceVersion", "in": "query", "schema": {"type": "string",
                                                                                     "pattern": "^[0-9]+$"}}],
                "responses": {"200": {"description": "Deleted (or marked for deletion)", **obj},
                              **errors(400, 404, 409)},
            },
        }
        paths[f"/api/v1/{info.plural}/{{name}}/status"] = {
            "parameters": [name_param],
            "get": {
                "summary": f"Status of a {info.kind} (read-only)",
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status", "resourceVersion"]}}}}, **errors(404, 422)},
            },
        }
    paths["/api/v1/apply"] = {
        "post": {
            "summary": "Apply many objects in one transaction; ?dryRun=true returns what would change. "
            "As application/x-ndjson: one object per line, then the line {\"end\": N} (N objects sent; a "
            "stream without it writes nothing), options in the query; the answer is then NDJSON too: "
            "{\"change\": ...} lines, then {\"summary\": ...}",
            "parameters": [
                {"name": "dryRun", "in": "query", "schema": {"type": "boolean"}},
                {"name": "prune", "in": "query", "schema": {"type": "boolean"},
                 "description": "(application/x-ndjson requests; JSON ones say it in the body)"},
                {"name": "source", "in": "query", "schema": {"type": "string"},
                 "description": "(application/x-ndjson requests)"},
                {"name": "plan", "in": "query", "schema": {"type": "boolean"},
                 "description": "(application/x-ndjson requests)"},
                {"name": "omitUnchanged", "in": "query", "schema": {"type": "boolean"},
                 "description": "(application/x-ndjson requests) count unchanged objects in the summary "
                 "instead of a line each"},
            ],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("ApplyRequest")},
                "application/x-ndjson": {"schema": {"type": "string"}},
            }},
            "responses": {"200": {"description": "Changes", "content": {
                "application/json": {"schema": {"type": "object", "required": ["revision", "changes"]}},
                "application/x-ndjson": {"schema": {"type": "string"}},
            }}, **errors(400, 409, 413, 422)},
        }
    }
    paths["/api/v1/hosts/{name}/adopt"] = {
        "parameters": [name_param],
        "post": {
            "summary": "Objects reproducing foreign domains of a host ({domains: [...]} or {all: true}); "
            "read-only: the caller writes them to Git and applies them",
            "responses": {"200": {"description": "adopted: [{domain, objects}], refused: [{domain, problems}]"},
                          **errors(400, 404, 413, 422)},
        },
    }
    paths["/api/v1/backup"] = {
        "get": {"summary": "The whole store: specs with server metadata and statuses (no events, no leases)",
                "responses": {"200": {"description": "a virtplane.io/backup/v1 document"}, **errors()}},
    }
    paths["/api/v1/restore"] = {
        "post": {"summary": "Load a backup into an empty store (409 if it is not empty; nothing written)",
                 "responses": {"200": {"description": "{restored: N}"}, **errors(400, 409, 413, 422)}},
    }
    paths["/api/v1/watch"] = {
        "get": {
            "summary": "JSON lines of changes from ?resourceVersion= (a stream that does not end)",
            "parameters": [
                {"name": "resourceVersion", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
                {"name": "kinds", "in": "query", "schema": {"type": "string"}},
                {"name": "parts", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {"200": {"description": "stream", "content": {"application/x-ndjson": {}}},
                          **errors(400)},
        }
    }
    paths["/api/v1/events"] = {
        "get": {
            "summary": "The newest events, oldest first (?for=Kind/name, ?correlationId=, ?limit=, ?continue= "
            "from metadata.continue: the page of older ones; ?watch=true: a stream that does not end)",
            "parameters": [
                {"name": "for", "in": "query", "schema": {"type": "string"}},
                {"name": "correlationId", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                {"name": "continue", "in": "query", "schema": {"type": "string"}},
                {"name": "watch", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": {"200": {"description": "Events", "content": {"application/json": {"schema": {
                "type": "object", "required": ["items"]}}, "application/x-ndjson": {}}}, **errors(400)},
        }
    }
    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    js = {"content": {"application/json": {"schema": {"type": "object"}}}}
    body = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    paths["/api/v1/login"] = {"post": {
        "summary": 'Directory login: {"username", "password"} -> a session token (401 refused, 503 directory down)',
        "security": [], "requestBody": body,
        "responses": {"200": {"description": "A session", **js}, "400": err["400"], "401": err["401"],
                      "413": err["413"], "501": err["501"], "503": err["503"]}}}
    paths["/api/v1/logout"] = {"post": {"summary": "Revoke the caller's session",
                                        "responses": {"200": {"description": "OK", **js}, **errors(400)}}}
    paths["/api/v1/auth/whoami"] = {"get": {"summary": "The caller's user, groups and credential",
                                            "responses": {"200": {"description": "OK", **js}, **errors()}}}
    paths["/api/v1/auth/can-i"] = {"get": {
        "summary": "?verb=&kind=&cluster= -> {allowed} for the caller",
        "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("verb", "kind", "cluster")],
        "responses": {"200": {"description": "OK", **js}, **errors(400)}}}
    paths["/api/v1/tokens"] = {
        "get": {"summary": "Service-account API tokens (ids, never secrets)",
                "responses": {"200": {"description": "OK", **js}, **errors()}},
        "post": {"summary": '{"account", "description"?, "ttlSeconds"?} -> a token, shown once',
                 "requestBody": body, "responses": {"201": {"description": "Created", **js}, **errors(400, 413)}},
    }
    paths["/api/v1/tokens/{id}"] = {"delete": {
        "summary": "Revoke an API token",
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {"200": {"description": "OK", **js}, **errors(404)}}}
    paths["/api/v1/audit"] = {"get": {
        "summary": "Audit records (?user=, ?since=ISO-8601, ?limit=), oldest first",
        "parameters": [{"name": "user", "in": "query", "schema": {"type": "string"}},
                       {"name": "since", "in": "query", "schema": {"type": "string"}},
                       {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
        "responses": {"200": {"description": "OK", **js}, **errors(400)}}}
    for p in ("/healthz", "/readyz"):
        paths[p] = {"get": {"summary": p[1:], "security": [], "responses": {
            "200": {"description": "OK", **text}, "503": {"description": "etcd unavailable", **text}}}}
    paths["/metrics"] = {"get": {"summary": "Prometheus metrics (the token unless --metrics-public)",
                                 "responses": {"200": {"description": "OK", **text}, "401": err["401"]}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "virtplane API", "version": "v1"},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths,
    }
