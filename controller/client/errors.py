"""What the SDK raises (no network code here: the CLI imports these before it needs a client)."""

from __future__ import annotations

from typing import Any


class ServerUnreachable(Exception):
    pass


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


class Conflict(ApiError):
    pass


class NotFound(ApiError):
    pass


class Invalid(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class Unavailable(ApiError):
    pass
