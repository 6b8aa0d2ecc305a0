"""`apply` and `diff`: a Git checkout of YAML against the store."""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.cli.common import EXIT_DIFFERS, client, reporting
from controller.cli.output import err, out, plan_lines, unified_diff

if TYPE_CHECKING:  # imported where used, so that `virtplane --help` starts fast
    from controller.gitops.manifest import ManifestDocument

PROGRESS_EVERY = 200  # objects sent between updates of the progress line (shown from the first update)

FilesOption = Annotated[list[str], typer.Option("-f", "--filename", help="File, directory (recursive) or - for stdin.")]


def _stream(paths: list[str], objects: list[ManifestDocument], progress: Callable[[int], None] | None = None
            ) -> Iterator[bytes]:
    """The JSON of each object of ``paths`` as soon as it is read and validated (sent while the rest is
    still being read); ``objects`` collects them, for locating what the server refuses. A problem in the
    files raises ManifestError at the end, which abandons the request: nothing is written."""
    from controller.gitops.manifest import iter_paths

    stdin = sys.stdin if "-" in paths else None
    for found, data in iter_paths(paths, stdin):
        objects.append(found)
        # The data as the user wrote it (the server fills in defaults itself): half the bytes of the model's
        # full dump, and no serialization of defaults on either side.
        yield json.dumps(data, separators=(",", ":"), default=_scalar).encode()
        if progress is not None and len(objects) % PROGRESS_EVERY == 0:
            progress(len(objects))


def _scalar(value: Any) -> str:
    """YAML scalars JSON has no type for (timestamps): as text, which validation then judges."""
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _apply_once(
    paths: list[str], *, dry_run: bool, prune: bool, source: str | None, correlation_id: str | None
) -> dict[str, Any]:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    objects: list[ManifestDocument] = []
    with reporting(objects):
        started = time.perf_counter()
        cid = correlation_id or uuid.uuid4().hex[:16]
        with client() as vp, contextlib.ExitStack() as stack:
            shown: Callable[[int], None] | None = None
            if sys.stderr.isatty():
                progress = stack.enter_context(Progress(
                    SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, transient=True
                ))
                task = progress.add_task("applying", total=None, visible=False)

                def shown(count: int) -> None:
                    progress.update(task, description=f"applying: {count} objects sent", visible=True)

            result = vp.apply_stream(
                _stream(paths, objects, shown), dry_run=dry_run, prune=prune, source=source, correlation_id=cid,
                plan=False,
            )
        _print_apply(result, time.perf_counter() - started)
        return result


def _print_apply(result: dict[str, Any], seconds: float) -> None:
    changes = result["changes"]
    suffix = " (dry run)" if result["dryRun"] else ""
    counts: dict[str, int] = {}
    for c in changes:
        counts[c["action"]] = counts.get(c["action"], 0) + 1
    # Deletions first: prune says what it removes before anything else.
    ordered = sorted(changes, key=lambda c: c["action"] != "deleted")
    verbose = len(changes) <= 50
    lines = [
        f"{c['kind'].lower()}/{c['name']} {c['action']}{suffix}"
        for c in ordered
        if verbose or c["action"] != "unchanged"
    ]
    if lines:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()  # --watch keeps running: show each apply as it happens
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing to apply"
    tx = result.get("transactions", 0)
    err.print(
        f"[dim]{len(changes)} object(s): {summary}; {tx} transaction(s), revision {result['revision']}, "
        f"correlation id {result['correlationId']}, {seconds:.2f} s{suffix}[/]"
    )


def apply(
    filename: FilesOption,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete objects applied earlier from --source and absent now.")
    ] = False,
    source: Annotated[str | None, typer.Option("--source", help="Name of this Git source (for --prune).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep running; re-apply whenever a file changes.")] = False,
    correlation_id: Annotated[str | None, typer.Option("--correlation-id", help="Trace id for this change.")] = None,
) -> None:
    """Apply YAML files: all objects in one transaction, or none."""
    if prune and not source:
        err.print("[bold red]error:[/] --prune needs --source NAME (which Git source owns the objects)")
        raise typer.Exit(2)
    if not watch:
        _apply_once(filename, dry_run=dry_run, prune=prune, source=source, correlation_id=correlation_id)
        return
    if "-" in filename:
        err.print("[bold red]error:[/] --watch cannot read stdin")
        raise typer.Exit(2)
    _watch_loop(filename, dry_run=dry_run, prune=prune, source=source)


def _watch_loop(paths: list[str], *, dry_run: bool, prune: bool, source: str | None) -> None:
    from watchfiles import watch as watch_files

    def attempt() -> None:
        try:
            _apply_once(paths, dry_run=dry_run, prune=prune, source=source, correlation_id=None)
        except typer.Exit:
            err.print("[yellow]not applied; fix the files and save again[/]")

    # The watcher is running once it yields its first (empty, timed-out) batch: only then apply and
    # announce, so a save made right after the first apply is never missed.
    started = False
    try:
        for changes in watch_files(*paths, debounce=300, rust_timeout=200, yield_on_timeout=True):
            if not started:
                started = True
                attempt()
                err.print(f"[dim]watching {', '.join(paths)} for changes (Ctrl-C to stop)[/]")
                continue
            names = sorted({p for _, p in changes if p.endswith((".yaml", ".yml"))})
            if not names:
                continue
            err.print(f"[bold]changed:[/] {', '.join(names)}")
            attempt()
    except KeyboardInterrupt:
        pass


def diff(
    filename: FilesOption,
    prune: Annotated[bool, typer.Option("--prune", help="Also show objects --prune would delete.")] = False,
    source: Annotated[str | None, typer.Option("--source", help="Git source name (for --prune).")] = None,
    plan: Annotated[bool, typer.Option("--plan/--no-plan", help="Show the controller's plan per object.")] = True,
) -> None:
    """Show what apply would change: a unified diff per object, then the plan.

    Exit 0 when nothing differs, 1 when something does, 2 or more on error."""
    objects: list[ManifestDocument] = []
    with reporting(objects), client() as vp:
        result = vp.apply_stream(_stream(filename, objects), dry_run=True, prune=prune, source=source, plan=plan,
                                 omit_unchanged=True)
    differs = False
    for change in result["changes"]:
        if change["action"] == "unchanged":
            continue
        differs = True
        for line in unified_diff(change["kind"], change["name"], change.get("before"), change.get("after")):
            out.print(line)
        if change.get("plan") or change.get("planNote"):
            out.print(f"  [bold]plan for {change['kind'].lower()}/{change['name']}:[/]")
            for line in plan_lines(change.get("plan") or [], change.get("planNote")):
                out.print(line)
    if differs:
        raise typer.Exit(EXIT_DIFFERS)
