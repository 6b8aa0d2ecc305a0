"""The reconcile error tree. Every reconcile ends with one of these (or succeeds)::

    ReconcileError                      (host, op, libvirt code/domain when it came from libvirt)
    ├── TransientError(retry_after)     → backoff requeue: connection lost, operation timeout,
    │   │                                 domain busy with a job, any unclassified failure
    │   └── ConnectionLost              → the host connection broke; it reopens with backoff
    ├── ConflictError                   → immediate requeue: the world is not what the plan assumed
    │   └── NotFound                    → no such domain / pool / volume / network (stale observation)
    └── TerminalError                   → no requeue; becomes a status condition with the reason
        ├── SpecInvalid                 → the backend rejected our configuration or credentials
        └── Unsupported                 → the hypervisor/driver/backend cannot do this
    InconsistentResult                  → a bug: a re-plan after execution was not empty (loud log, metric, event)

Adapters classify their own failures into this tree in one place each (libvirt:
``controller.adapters.libvirt.errors.classify``); everything else catches the tree.
"""

from __future__ import annotations


class ReconcileError(Exception):
    """Base of every error a reconcile can end with. ``op`` is the libvirt call ("define", "start"...)."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        op: str | None = None,
        code: int | None = None,
        domain: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.op = op
        self.code = code
        self.domain = domain

    def __str__(self) -> str:
        where = " ".join(p for p in (f"host {self.host}" if self.host else "", self.op or "") if p)
        return f"{where}: {self.message}" if where else self.message


class TransientError(ReconcileError):
    """Retry with backoff; ``retry_after`` (seconds) overrides the queue's backoff when set."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        host: str | None = None,
        op: str | None = None,
        code: int | None = None,
        domain: int | None = None,
    ) -> None:
        super().__init__(message, host=host, op=op, code=code, domain=domain)
        self.retry_after = retry_after


class ConnectionLost(TransientError):
    """The host's libvirt connection broke; the connection reopens it with backoff."""


class ConflictError(ReconcileError):
    """The observed state the plan was built on is stale: re-observe and re-plan at once."""


class NotFound(ConflictError):
    """No such domain / pool / volume / network."""


class TerminalError(ReconcileError):
    """Retrying cannot help; report it as a status condition."""


class SpecInvalid(TerminalError):
    """libvirt rejected the configuration we derived from the spec."""


class Unsupported(TerminalError):
    """The host's hypervisor or libvirt driver does not support the operation."""


class InconsistentResult(Exception):
    """A bug: after executing a plan, a fresh plan for the same inputs was not empty."""
