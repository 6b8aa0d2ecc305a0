"""The client side: the Python SDK (``from controller.client import Client``) and the CLI configuration.

Never imports the server side (api/, runtime/, controllers/, store/, adapters/, server/).
"""

from controller.client.sdk import ApiError, Client, Conflict, Invalid, NotFound, ServerUnreachable, Unauthorized

__all__ = ["ApiError", "Client", "Conflict", "Invalid", "NotFound", "ServerUnreachable", "Unauthorized"]
