"""The JSON shapes that cross HTTP, shared by the API server and the Python client.

An object on the wire is ``{apiVersion, kind, metadata, spec, status?}``; errors are
``{"error": {"code", "reason", "message", "details"}}`` like Kubernetes' Status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from specs.errors import error_path, format_path, problem_message
from specs.meta import Resource, StatusBase

CORRELATION_HEADER = "X-Correlation-Id"


def resource_to_wire(resource: Resource, status: StatusBase | None = None) -> dict[str, Any]:
    body: dict[str, Any] = resource.model_dump(mode="json", exclude_none=True)
    if status is not None:
        body["status"] = status.model_dump(mode="json", exclude_none=True)
    return body


def spec_to_wire(resource: Resource | None) -> dict[str, Any] | None:
    """The user-owned part of an object, as the user would write it (defaults left out)."""
    if resource is None:
        return None
    meta = resource.metadata
    metadata: dict[str, Any] = {"name": meta.name}
    if meta.labels:
        metadata["labels"] = dict(meta.labels)
    if meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    spec = resource.spec.model_dump(mode="json", exclude_defaults=True) if resource.spec is not None else None
    return {"apiVersion": resource.apiVersion, "kind": resource.kind, "metadata": metadata, "spec": spec}


def error_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "reason": reason, "message": message, "details": details}}


def validation_problems(
    error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[dict[str, str]]:
    """Each error as {field, message, type (pydantic's: extra_forbidden, ...)}, worded as the CLI words its
    own (``spec.disks[0].bus``, what was expected, did-you-mean for an unknown field of ``model``): the CLI
    leaves validation to the server and shows these at the field's line in the user's file."""
    problems = []
    for item in error.errors(include_url=False):
        field = format_path(error_path(item))
        problems.append({"field": f"{prefix}{field}", "message": problem_message(item, model), "type": item["type"]})
    return problems


def strip_server_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """A client may send back what it read; the server owns these metadata fields and ignores them."""
    body = dict(data)
    body.pop("status", None)
    meta = dict(body.get("metadata") or {})
    for key in (
        "uid",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "finalizers",
        "correlationId",
        "source",
        "ownerReferences",
    ):
        meta.pop(key, None)
    body["metadata"] = meta
    return body


class HookError(Exception):
    """A request the API hands to the controllers (a hook such as adopt) cannot be served; ``code`` is the
    HTTP status to answer with, the message says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
