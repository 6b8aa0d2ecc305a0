"""The HTTP API: the Starlette app and its handlers, wire models, OpenAPI, authentication and authorization."""
