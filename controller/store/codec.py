"""Key layout and JSON encoding of what the store keeps in etcd.

::

    /virtplane/specs/<Kind>/<name>    {apiVersion, kind, metadata, spec}   metadata without
                                      resourceVersion: that is the key's mod_revision, set on read
    /virtplane/status/<Kind>/<name>   status JSON
    /virtplane/events/<time>-<id>     event JSON, on a lease
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from specs.event import Event
from specs.kinds import KINDS
from specs.meta import Resource, StatusBase
from specs.versions import CONVERSIONS

ROOT = "/virtplane/"
SPECS = ROOT + "specs/"
STATUS = ROOT + "status/"
EVENTS = ROOT + "events/"

Part = Literal["spec", "status", "event"]

# resourceVersion is never stored: it is the key's mod_revision.
EXCLUDE_RV: Any = {"metadata": {"resourceVersion"}}


def spec_key(kind: str, name: str) -> bytes:
    return f"{SPECS}{kind}/{name}".encode()


def status_key(kind: str, name: str) -> bytes:
    return f"{STATUS}{kind}/{name}".encode()


def kind_prefix(kind: str, part: Literal["spec", "status"] = "spec") -> bytes:
    return f"{SPECS if part == 'spec' else STATUS}{kind}/".encode()


def event_name(when: datetime, uid: str) -> str:
    """``20261130T043512.123456Z-1a2b3c4d5e6f``: sorts by time."""
    return f"{when.strftime('%Y%m%dT%H%M%S.%f')}Z-{uid.replace('-', '')[:12]}"


def parse_key(key: str) -> tuple[Part, str, str] | None:
    """``/virtplane/specs/VirtualMachine/web`` → ("spec", "VirtualMachine", "web"); None if foreign."""
    if key.startswith(SPECS):
        kind, _, name = key[len(SPECS):].partition("/")
        return "spec", kind, name
    if key.startswith(STATUS):
        kind, _, name = key[len(STATUS):].partition("/")
        return "status", kind, name
    if key.startswith(EVENTS):
        return "event", "Event", key[len(EVENTS):]
    return None


# -- kind lookups (specs.kinds); objects of kinds this build does not know stay generic ------------

def resource_model(kind: str) -> type[Resource]:
    info = KINDS.get(kind)
    return info.model if info is not None else Resource


def status_model(kind: str) -> type[StatusBase]:
    info = KINDS.get(kind)
    return info.status_model if info is not None else StatusBase


# -- encode / decode -------------------------------------------------------------------------------

def encode_resource(resource: Resource) -> bytes:
    return resource.model_dump_json(exclude=EXCLUDE_RV).encode()


def decode_raw(value: bytes) -> dict[str, Any]:
    data = orjson.loads(value)  # ValueError (orjson.JSONDecodeError) if it is not JSON
    if not isinstance(data, dict):
        raise ValueError("stored value is not a JSON object")
    return data


def resource_from_raw(raw: dict[str, Any], mod_revision: int) -> Resource:
    """Validate a stored spec document; resourceVersion comes from the key's mod_revision."""
    if not isinstance(raw.get("metadata", {}), dict):
        raise ValueError("stored metadata is not an object")
    data = dict(CONVERSIONS.upgrade(raw))  # stored by an older server in an older version
    data["metadata"] = {**data.get("metadata", {}), "resourceVersion": str(mod_revision)}
    return resource_model(str(raw.get("kind"))).model_validate(data)


def decode_resource(value: bytes, mod_revision: int) -> Resource:
    return resource_from_raw(decode_raw(value), mod_revision)


def encode_status(status: StatusBase) -> bytes:
    return status.model_dump_json().encode()


def decode_status(kind: str, value: bytes) -> StatusBase:
    return status_model(kind).model_validate_json(value)


def encode_event(event: Event) -> bytes:
    return event.model_dump_json().encode()


def decode_event(value: bytes) -> Event:
    return Event.model_validate_json(value)


def decode_part(part: Part, kind: str, value: bytes, mod_revision: int) -> BaseModel:
    if part == "spec":
        return decode_resource(value, mod_revision)
    if part == "status":
        return decode_status(kind, value)
    return decode_event(value)
