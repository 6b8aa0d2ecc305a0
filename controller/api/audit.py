"""Recording every write request in the audit log (``controller.store.audit``), allowed or refused.

Called once per POST/PUT/DELETE by the route wrapper of ``controller.api.app`` after the handler answered.
Handlers leave what they know on ``request.state``: ``identity`` (who, once authenticated),
``audit_objects`` ("Kind/name" written or refused), ``audit_user`` (the name given at a refused login),
``audit_reason`` (a typed reason such as "wrong-password"), ``audit_skip`` (a dry run writes nothing).
Not recorded: dry runs, an apply that changed nothing, and requests refused as bad input or conflicts
(``NOTHING_WRITTEN``): they wrote nothing and leave etcd untouched. A record never holds a password or a
bearer secret: the credential is named by its id.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from controller.common.wire import CORRELATION_HEADER
from controller.store import MAX_OBJECTS_PER_RECORD, AuditRecord, Store, StoreError

log = logging.getLogger("virtplane.audit")

# Bad input, a missing object, a lost compare-and-swap, too large: nothing was written and nobody was
# refused for who they are. These are not recorded (and leave etcd untouched, revision included).
NOTHING_WRITTEN = frozenset({400, 404, 405, 409, 413, 422})
VERB_OF_ROUTE = {"create": "create", "put": "update", "delete": "delete", "apply": "apply"}


def _message(response: Response) -> str:
    try:
        body = json.loads(bytes(response.body))
    except (ValueError, AttributeError):
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("message", "")) if isinstance(error, dict) else ""


def build_record(request: Request, response: Response, route: str) -> AuditRecord | None:
    state = request.state
    if getattr(state, "audit_skip", False):
        return None
    who = getattr(state, "identity", None)
    objects = list(getattr(state, "audit_objects", ()))
    code = response.status_code
    if route not in ("login", "logout") and code in NOTHING_WRITTEN:
        return None  # refused as bad input or a conflict before anything was written, and not for who it was
    if route == "apply" and code < 300 and not objects:
        return None  # everything was unchanged: nothing written
    reason = getattr(state, "audit_reason", "") or (_message(response) if code >= 400 else "")
    return AuditRecord(
        time=datetime.now(UTC),
        user=who.name if who is not None else getattr(state, "audit_user", "-"),
        verb=getattr(state, "audit_verb", None) or VERB_OF_ROUTE.get(route, route),
        allowed=code not in (401, 403),
        code=code,
        address=request.client.host if request.client else "",
        correlation_id=response.headers.get(CORRELATION_HEADER) or request.headers.get(CORRELATION_HEADER) or "",
        credential=who.credential if who is not None else "",
        objects=tuple(objects[:MAX_OBJECTS_PER_RECORD]),
        object_count=len(objects),
        reason=reason[:500],
    )


async def record(store: Store, request: Request, response: Response, route: str) -> None:
    entry = build_record(request, response, route)
    if entry is None:
        return
    try:
        await store.audit.append(entry)
    except StoreError as e:  # the write it describes has been answered; say loudly that its record is lost
        log.error("audit record lost (%s %s by %s, code %d): %s", entry.verb, ",".join(entry.objects[:3]),
                  entry.user, entry.code, e)
