"""The `virtplane` entry point: the client-side CLI plus the commands that run things on this machine
(`server`, `lab`). The one place that wires the CLI to the server side.

The server and lab commands import the whole server (controllers, libvirt, etcd client): ~0.6 s that a
client command (`apply`, `get`, ...) does not pay — they are wired only when the command line may need
them (they are named, or no command is: help).
"""

from __future__ import annotations

import sys

from controller.cli import app
from controller.common import gcpolicy

SERVER_SIDE = ("server", "lab")


def _wire_server_side() -> None:
    from controller.dev.lab.cli import app as lab_app
    from controller.server.cli import server

    app.command()(server)
    app.add_typer(lab_app, name="lab", help="A multi-host libvirt lab on this machine (root).")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    gcpolicy.tune()  # the server's own command freezes what start-up built as well
    words = [a for a in args if not a.startswith("-")]
    if not words or any(w in SERVER_SIDE for w in words):
        _wire_server_side()
    app(args=args)
