"""What every CLI command shares: the client, error reporting and exit codes.

Exit codes: 0 ok; 1 `diff` found differences (kubectl's contract) or `wait` timed out; 2 bad input
(nothing was written); 3 conflict with a concurrent writer; 4 server unreachable or failed; 5 not logged in
or not allowed (401/403: nothing was written), or `auth can-i` answered no.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import typer

from controller.cli.output import err
from controller.client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    ServerUnreachable,
    Unauthorized,
)

if TYPE_CHECKING:  # imported where used: `virtplane --help` starts without them (pydantic, httpx)
    from controller.client.sdk import Client
    from controller.gitops.manifest import ManifestDocument
    from specs.kinds import KindInfo

EXIT_DIFFERS = 1
EXIT_INVALID = 2
EXIT_CONFLICT = 3
EXIT_SERVER = 4
EXIT_FORBIDDEN = 5


class Globals:
    server: str | None = None
    token: str | None = None
    ca: str | None = None


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def client() -> Client:
    from controller.client.config import ConfigMissing
    from controller.client.sdk import Client

    try:
        return Client.from_config(Globals.server, Globals.token, Globals.ca)
    except ConfigMissing as e:
        fail(str(e), EXIT_SERVER)


def kind_info(text: str) -> KindInfo:
    from specs.kinds import UnknownKind, resolve_kind

    try:
        return resolve_kind(text)
    except UnknownKind as e:
        fail(str(e), EXIT_INVALID)


def split_ref(ref: str, name: str | None = None) -> tuple[KindInfo, str | None]:
    """`vm/web`, or `vm web`, or just `vm`."""
    if "/" in ref:
        kind_text, _, ref_name = ref.partition("/")
        return kind_info(kind_text), ref_name
    return kind_info(ref), name


@contextlib.contextmanager
def reporting(objects: list[ManifestDocument] | None = None) -> Iterator[None]:
    """Turn every expected failure into a clear message and its exit code."""
    from controller.gitops.manifest import ManifestError

    try:
        yield
    except ManifestError as e:
        for problem in e.problems:
            err.print(f"[red]{problem}[/]")
        fail(f"{len(e.problems)} problem(s) in the input; nothing was written", EXIT_INVALID)
    except Invalid as e:
        lines: list[tuple[tuple[int, int, int], str]] = []
        for n, p in enumerate(e.details.get("problems", [])):
            where, order = "", (0, 0, n)
            if objects is not None and isinstance(p.get("index"), int) and 0 <= p["index"] < len(objects):
                loc = objects[p["index"]].locate(str(p.get("field", "")), key=p.get("type") == "extra_forbidden")
                where, order = f"{loc.path}:{loc.line}:{loc.column}: ", (p["index"], loc.line, loc.column)
            lines.append((order, f"[red]{where}{p.get('field', '')}: {p.get('message', '')}[/]"))
        for _, line in sorted(lines):  # in file order, as the CLI's own problems
            err.print(line)
        fail(f"the server rejected the input ({e.message}); nothing was written", EXIT_INVALID)
    except Conflict as e:
        fail(f"conflict: {e.message} — someone else changed it; re-read and try again", EXIT_CONFLICT)
    except NotFound as e:
        fail(e.message, EXIT_INVALID)
    except Unauthorized as e:
        fail(f"{e.message}", EXIT_FORBIDDEN)
    except Forbidden as e:
        for d in e.details.get("denied", []):
            where = ""
            index = d.get("index")
            if objects is not None and isinstance(index, int) and index < len(objects):
                loc = objects[index].location
                where = f"{loc.path}:{loc.line}:{loc.column}: "
            scope = f"in cluster {d['cluster']}" if d.get("cluster") else "(global)"
            err.print(f"[red]{where}{d.get('kind')}/{d.get('name')}: may not {d.get('verb')} {scope}[/]")
        fail(e.message, EXIT_FORBIDDEN)
    except ApiError as e:
        extra = ""
        if e.reason == "TooLarge":
            code = EXIT_INVALID
            extra = " (nothing was written)"
        elif e.reason == "PartialApply":
            code = EXIT_SERVER
            extra = (
                f"\n  written: {', '.join('/'.join(k) for k in e.details.get('written', []))}"
                f"\n  NOT written: {', '.join('/'.join(k) for k in e.details.get('notWritten', []))}"
            )
        else:
            code = EXIT_SERVER
        fail(f"{e.message}{extra}", code)
    except ServerUnreachable as e:
        fail(str(e), EXIT_SERVER)
