"""The client side: the Python SDK (``from controller.client import Client``) and the CLI configuration.

Never imports the server side (api/, runtime/, controllers/, store/, adapters/, server/). The SDK (and so
httpx) is imported on first use, so that a command that needs no server starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from controller.client.errors import ApiError, Conflict, Invalid, NotFound, ServerUnreachable, Unauthorized

if TYPE_CHECKING:
    from controller.client.sdk import Client

__all__ = ["ApiError", "Client", "Conflict", "Invalid", "NotFound", "ServerUnreachable", "Unauthorized"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from controller.client.sdk import Client

        return Client
    raise AttributeError(name)
