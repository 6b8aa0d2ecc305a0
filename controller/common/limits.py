"""Limits shared by the server and its command line (no imports: the CLI reads them at start)."""

# Request bodies above this get 413; apply splits what it stores into bounded transactions itself.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
