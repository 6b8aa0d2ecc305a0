"""The one place where ``libvirt.libvirtError`` is classified into the reconcile error tree
(``controller.common.errors``). Only :func:`classify` looks at libvirt error codes."""

from __future__ import annotations

import libvirt

from controller.common.errors import (
    ConflictError,
    ConnectionLost,
    InconsistentResult,
    NotFound,
    ReconcileError,
    SpecInvalid,
    TerminalError,
    TransientError,
    Unsupported,
)

__all__ = [
    "ConflictError",
    "ConnectionLost",
    "InconsistentResult",
    "NotFound",
    "ReconcileError",
    "SpecInvalid",
    "TerminalError",
    "TransientError",
    "Unsupported",
    "classify",
    "redacted",
]


def _codes(*names: str) -> frozenset[int]:
    # Constants exist only if the libvirt the bindings were built against knows them.
    return frozenset(getattr(libvirt, n) for n in names if hasattr(libvirt, n))


_CONNECTION = _codes("VIR_ERR_NO_CONNECT", "VIR_ERR_INVALID_CONN", "VIR_ERR_RPC", "VIR_ERR_AUTH_UNAVAILABLE")
_TRANSIENT = _codes(
    "VIR_ERR_OPERATION_TIMEOUT",  # "cannot acquire state change lock": the domain is busy with a job
    "VIR_ERR_AGENT_UNRESPONSIVE",
    "VIR_ERR_RESOURCE_BUSY",
    "VIR_ERR_OPERATION_ABORTED",
)
_CONFLICT = _codes(
    "VIR_ERR_OPERATION_INVALID",  # "domain is already running" / "domain is not running"
    "VIR_ERR_DOM_EXIST",
)
_NOT_FOUND = _codes(
    "VIR_ERR_NO_DOMAIN",
    "VIR_ERR_NO_STORAGE_POOL",
    "VIR_ERR_NO_STORAGE_VOL",
    "VIR_ERR_NO_NETWORK",
    "VIR_ERR_NO_DOMAIN_SNAPSHOT",
)
_UNSUPPORTED = _codes(
    "VIR_ERR_NO_SUPPORT",
    "VIR_ERR_ARGUMENT_UNSUPPORTED",
    "VIR_ERR_OPERATION_UNSUPPORTED",
    "VIR_ERR_CONFIG_UNSUPPORTED",
)
_SPEC_INVALID = _codes(
    "VIR_ERR_XML_ERROR", "VIR_ERR_XML_DETAIL", "VIR_ERR_INVALID_ARG", "VIR_ERR_AUTH_FAILED"
)  # fmt: skip
# System errors raised by the RPC layer ("Cannot recv data: Connection reset by peer", "End of file while
# reading data") mean the connection is gone, not that the operation failed.
_CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})


def classify(exc: libvirt.libvirtError, *, host: str | None = None, op: str | None = None) -> ReconcileError:
    """Map a libvirt error to the tree. Unknown failures are transient: back off, never give up silently."""
    code = exc.get_error_code()
    domain = exc.get_error_domain()
    message = _bounded(exc.get_error_message() or str(exc))
    return _error_class(code, domain)(message, host=host, op=op, code=code, domain=domain)


def _bounded(message: str, limit: int = 300) -> str:
    """The first line of libvirt's message, at most ``limit`` characters: libvirt quotes the offending
    input after the first line (an XML parser's view of a file), which must not reach status or events."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _error_class(code: int, domain: int) -> type[ReconcileError]:
    if code in _CONNECTION or (code == libvirt.VIR_ERR_SYSTEM_ERROR and domain in _CONNECTION_DOMAINS):
        return ConnectionLost
    if code in _TRANSIENT:
        return TransientError
    if code in _NOT_FOUND:
        return NotFound
    if code in _CONFLICT or (code == libvirt.VIR_ERR_INTERNAL_ERROR and domain == libvirt.VIR_FROM_TEST):
        # The test driver reports state conflicts ("already running", "not running") as internal errors
        # where the QEMU driver says OPERATION_INVALID.
        return ConflictError
    if code in _UNSUPPORTED:
        return Unsupported
    if code in _SPEC_INVALID:
        return SpecInvalid
    return TransientError


_CODE_NAMES = {v: k for k, v in vars(libvirt).items() if k.startswith("VIR_ERR_") and isinstance(v, int)}
_DOMAIN_NAMES = {v: k for k, v in vars(libvirt).items() if k.startswith("VIR_FROM_") and isinstance(v, int)}


def redacted(exc: libvirt.libvirtError) -> str:
    """What may be shown in status for a failed connection: libvirt's error code and source, never its
    text. Opening a connection can make libvirt read a file named in the URI (a key, a socket, a node
    definition) and its message can quote that file's content; the full text goes to the server log only."""
    code = _CODE_NAMES.get(exc.get_error_code(), str(exc.get_error_code()))
    domain = _DOMAIN_NAMES.get(exc.get_error_domain(), str(exc.get_error_domain()))
    return f"libvirt refused the connection ({code} from {domain}); libvirt's message is in the server log"
