"""`get`, `describe`, `delete`, `events`, `wait`: reading and following the store."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.cli.common import EXIT_DIFFERS, EXIT_INVALID, client, fail, reporting, split_ref
from controller.cli.output import age, cell, err, out, plain_lines, print_table, rich_table, table_rows, to_yaml
from controller.client.errors import NotFound

if TYPE_CHECKING:  # imported where used, so that `virtplane --help` starts fast
    from controller.client.sdk import Client
    from specs.kinds import KindInfo
    from specs.selector import LabelSelector

OutputOption = Annotated[str, typer.Option("-o", "--output", help="table, wide, yaml, json or name.")]


def _emit(info: KindInfo, items: list[dict[str, Any]], output: str, *, headers: bool = True) -> None:
    if output == "json":
        body = items[0] if len(items) == 1 and not headers else {"items": items}
        sys.stdout.write(json.dumps(body, indent=2) + "\n")
    elif output == "yaml":
        docs = [to_yaml(i) for i in items]
        sys.stdout.write("---\n".join(docs))
    elif output == "name":
        sys.stdout.write("".join(f"{info.singular}/{i['metadata']['name']}\n" for i in items))
    elif output in ("table", "wide"):
        cols, rows = table_rows(info, items, wide=output == "wide")
        print_table(cols, rows, show_headers=headers)
    else:
        fail(f"-o {output}: expected table, wide, yaml, json or name", EXIT_INVALID)


def get(
    kind: Annotated[str, typer.Argument(help="Kind: vm, vms, virtualmachine, host, disk, ... or KIND/NAME.")],
    name: Annotated[str | None, typer.Argument(help="Object name.")] = None,
    output: OutputOption = "table",
    selector: Annotated[
        str | None, typer.Option("-l", "--selector", help="Label selector, e.g. app=web,tier!=db")
    ] = None,
    watch: Annotated[
        bool, typer.Option("-w", "--watch", help="Follow changes: a live table on a terminal, else a line per change.")
    ] = False,
) -> None:
    """List objects of a kind, or show one."""
    info, name = split_ref(kind, name)
    with reporting(), client() as vp:
        if watch:
            listed, revision = vp.list_at(info.plural, selector)
            items = [i for i in listed if name is None or i["metadata"]["name"] == name]
            if name and not items:
                items = [vp.get(info.plural, name)]  # NotFound, said the usual way
            _follow(vp, info, name, selector, output, items, revision)
            return
        items = [vp.get(info.plural, name)] if name else vp.list(info.plural, selector)
        if items or output not in ("table", "wide"):
            _emit(info, items, output, headers=not (name and output in ("json",)))
        else:
            err.print(f"No {info.plural} found.")


# name, and the object as it is now, or why it left the selection ("deleted", "no longer matches ...")
Change = tuple[str, dict[str, Any] | str]


def _follow(
    vp: Any,
    info: KindInfo,
    name: str | None,
    selector: str | None,
    output: str,
    items: list[dict[str, Any]],
    revision: int,
) -> None:
    """Print ``items``, then every change from ``revision + 1`` on. On a terminal with table output, one
    live table is redrawn in place (progress bars move); otherwise a line (or document) per change."""
    from specs.selector import LabelSelector

    current = {i["metadata"]["name"]: i for i in items}
    changes = _changes(vp, info, name, LabelSelector.parse(selector) if selector else None, revision, current)
    try:
        if output in ("table", "wide") and sys.stdout.isatty():
            _follow_live(info, output, current, changes)
        elif output in ("table", "wide"):
            _follow_lines(info, output, items, changes)
        else:
            _emit(info, items, output, headers=not (name and output in ("json",)))
            for key, obj in changes:
                if isinstance(obj, str):
                    sys.stdout.write(f"{info.singular}/{key} {obj}\n")
                else:
                    _emit(info, [obj], output, headers=False)
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass


def _changes(
    vp: Any, info: KindInfo, name: str | None, labels: LabelSelector | None, revision: int,
    current: dict[str, dict[str, Any]],
) -> Iterator[Change]:
    """The watch as changes of the selection; keeps ``current`` (name -> object) up to date."""
    for event in vp.watch([info.kind], resource_version=revision + 1):
        key = event["name"]
        if name and key != name:
            continue
        obj: dict[str, Any] | str = "deleted"
        if not (event["type"] == "DELETE" and event["part"] == "spec"):
            try:
                found: dict[str, Any] = vp.get(info.plural, key)
            except NotFound:  # deleted between the event and the read: its DELETE follows
                continue
            selected = labels is None or labels.matches(found["metadata"].get("labels") or {})
            obj = found if selected else f"no longer matches {labels}"
        if not isinstance(obj, str):
            current[key] = obj
        elif current.pop(key, None) is None:
            continue  # never shown
        yield key, obj


def _follow_live(info: KindInfo, output: str, current: dict[str, dict[str, Any]], changes: Iterator[Change]) -> None:
    from rich.live import Live
    from rich.text import Text

    def render() -> Any:
        if not current:
            return Text(f"No {info.plural} found.", style="dim")
        return rich_table(*table_rows(info, [current[k] for k in sorted(current)], wide=output == "wide"))

    with Live(render(), console=out, auto_refresh=False) as screen:
        for _ in changes:
            screen.update(render(), refresh=True)


def _follow_lines(info: KindInfo, output: str, items: list[dict[str, Any]], changes: Iterator[Change]) -> None:
    """A line per change, aligned with the header as far as it can be. A change the table does not show
    (a condition's timestamp, say; AGE aside) prints nothing."""
    headers, rows = table_rows(info, items, wide=output == "wide")
    ages = {i for i, h in enumerate(headers) if h == "AGE"}

    def seen(row: list[str]) -> list[str]:
        return [c for i, c in enumerate(row) if i not in ages]

    widths = [0] * len(headers)
    shown = {i["metadata"]["name"]: seen(row) for i, row in zip(items, rows, strict=True)}
    sys.stdout.write("\n".join(plain_lines(headers, rows, widths)) + "\n")
    sys.stdout.flush()
    for key, obj in changes:
        if isinstance(obj, str):
            shown.pop(key, None)
            sys.stdout.write(f"{info.singular}/{key} {obj}\n")
        else:
            row = table_rows(info, [obj], wide=output == "wide")[1][0]
            if shown.get(key) == seen(row):
                continue
            shown[key] = seen(row)
            sys.stdout.write(plain_lines(None, [row], widths)[0] + "\n")
        sys.stdout.flush()


def describe(
    ref: Annotated[str, typer.Argument(help="KIND/NAME or KIND")],
    name: Annotated[str | None, typer.Argument()] = None,
) -> None:
    """Spec, status, conditions and recent events of one object."""
    info, name = split_ref(ref, name)
    if not name:
        fail("describe needs KIND/NAME", EXIT_INVALID)
    with reporting(), client() as vp:
        obj = vp.get(info.plural, name)
        events = vp.events(involved=f"{info.kind}/{name}")
    meta = obj["metadata"]
    out.print(f"[bold]Name:[/]          {meta['name']}")
    out.print(f"[bold]Kind:[/]          {info.kind}")
    for label in (
        "uid",
        "generation",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "correlationId",
        "source",
    ):
        if meta.get(label) is not None:
            out.print(f"[bold]{label + ':':<15}[/]{meta[label]}")
    if meta.get("labels"):
        out.print(f"[bold]Labels:[/]        {cell(meta['labels'])}")
    if meta.get("finalizers"):
        out.print(f"[bold]Finalizers:[/]    {cell(meta['finalizers'])}")
    out.print("[bold]Spec:[/]")
    sys.stdout.write(_indent(to_yaml(obj.get("spec") or {})))
    status = dict(obj.get("status") or {})
    conditions = status.pop("conditions", [])
    if status:
        out.print("[bold]Status:[/]")
        sys.stdout.write(_indent(to_yaml(status)))
    out.print("[bold]Conditions:[/]")
    if conditions:
        print_table(
            ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            [
                [
                    c["type"],
                    c["status"],
                    c.get("reason") or "-",
                    age(c.get("lastTransitionTime")),
                    c.get("message") or "",
                ]
                for c in conditions
            ],
        )
    else:
        out.print("  <none>")
    out.print("[bold]Events:[/]")
    if events:
        print_table(
            ["LAST SEEN", "TYPE", "REASON", "MESSAGE"],
            [[age(e.get("lastTimestamp")), e["type"], e["reason"], e["message"]] for e in events[-20:]],
        )
    else:
        out.print("  <none>")


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def delete(
    ref: Annotated[str, typer.Argument(help="KIND/NAME or KIND")],
    names: Annotated[list[str] | None, typer.Argument(help="Names, when KIND is given alone.")] = None,
) -> None:
    """Delete objects (controllers tear down what they created first, via finalizers)."""
    info, name = split_ref(ref)
    targets = [name] if name else list(names or [])
    if not targets:
        fail("delete needs KIND/NAME or KIND NAME...", EXIT_INVALID)
    with reporting(), client() as vp:
        for target in targets:
            vp.delete(info.plural, target)
            sys.stdout.write(f"{info.singular}/{target} deleted\n")


def events(
    for_ref: Annotated[str | None, typer.Option("--for", help="Only events of KIND/NAME.")] = None,
    correlation_id: Annotated[str | None, typer.Option("--correlation-id", help="Only events of one change.")] = None,
    watch: Annotated[bool, typer.Option("-w", "--watch", help="Keep printing new events.")] = False,
    output: OutputOption = "table",
) -> None:
    """Events, oldest first: what the controllers did and why."""
    involved = None
    if for_ref:
        info, name = split_ref(for_ref)
        if not name:
            fail("--for expects KIND/NAME", EXIT_INVALID)
        involved = f"{info.kind}/{name}"
    with reporting(), client() as vp:
        if not watch:
            items = vp.events(involved=involved, correlation_id=correlation_id)
            if output == "json":
                sys.stdout.write(json.dumps({"items": items}, indent=2) + "\n")
                return
            _event_rows(items, headers=True)
            return
        first = True
        for item in vp.watch_events(involved=involved, correlation_id=correlation_id):
            _event_rows([item], headers=first)
            first = False
            sys.stdout.flush()


def _event_rows(items: list[dict[str, Any]], *, headers: bool) -> None:
    if not items and headers:
        err.print("No events found.")
        return
    rows = [
        [
            age(e.get("lastTimestamp")),
            e["type"],
            e["reason"],
            f"{e['involvedObject']['kind'].lower()}/{e['involvedObject']['name']}",
            e.get("correlationId") or "-",
            e.get("user") or "-",
            e["message"],
        ]
        for e in items
    ]
    print_table(["LAST SEEN", "TYPE", "REASON", "OBJECT", "CORRELATION", "USER", "MESSAGE"], rows,
                show_headers=headers)


def api_resources() -> None:
    """The kinds this CLI knows: the names `get`, `describe`, `delete` and `wait` accept for each (plural,
    singular, short), and whether it is kept in Git (applied) or made by the system. Needs no server."""
    from specs.kinds import KINDS

    rows = [
        [info.plural, ",".join(info.short), info.singular, info.kind, "yes" if info.gitops else "no"]
        for info in sorted(KINDS.values(), key=lambda i: i.plural)
    ]
    print_table(["NAME", "SHORTNAMES", "SINGULAR", "KIND", "GITOPS"], rows)


def wait(
    ref: Annotated[str, typer.Argument(help="KIND/NAME, or KIND with --all / -l.")],
    for_: Annotated[str, typer.Option("--for", help="condition=NAME[=True|False], or delete.")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds.")] = 30.0,
    all_: Annotated[bool, typer.Option("--all", help="Every object of the kind.")] = False,
    selector: Annotated[str | None, typer.Option("-l", "--selector", help="Objects with these labels.")] = None,
) -> None:
    """Wait until objects have a condition (or are gone). Exit 1 on timeout, naming what is missing."""
    info, name = split_ref(ref)
    if not name and not (all_ or selector):
        fail("wait needs KIND/NAME, or KIND with --all or -l", EXIT_INVALID)
    want_delete = for_ == "delete"
    cond_type, want = "", "True"
    if not want_delete:
        key, _, rest = for_.partition("=")
        if key != "condition" or not rest:
            fail(f"--for {for_!r}: expected condition=NAME[=True|False] or delete", EXIT_INVALID)
        cond_type, _, value = rest.partition("=")
        want = value or "True"

    def met(obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return want_delete
        status = obj.get("status") or {}
        # A condition about an older generation says nothing about the change just applied.
        if status.get("observedGeneration", 0) < obj["metadata"].get("generation", 0):
            return False
        conditions = status.get("conditions", [])
        return not want_delete and any(c["type"] == cond_type and c["status"] == want for c in conditions)

    deadline = time.monotonic() + timeout
    pending: list[str] = []
    with reporting(), client() as vp:
        if name:
            while True:  # one object: a read every 0.2 s costs the server next to nothing
                try:
                    objects: dict[str, dict[str, Any] | None] = {name: vp.get(info.plural, name)}
                except NotFound:
                    objects = {name: None}
                pending = sorted(n for n, o in objects.items() if not met(o))
                if not pending or time.monotonic() >= deadline:
                    break
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        else:
            # Many objects: list once, then follow the watch from that revision (a list of 10,000 every
            # 0.2 s would cost the server more than the controllers' work being waited for).
            objects, pending = _wait_watching(vp, info, selector, met, deadline)
        if not pending:
            what = "deleted" if want_delete else f"condition {cond_type}={want}"
            sys.stdout.write("".join(f"{info.singular}/{n} {what}\n" for n in sorted(objects)))
            return
    err.print(
        f"[bold red]timed out[/] after {timeout:g} s waiting for {for_} on: "
        + ", ".join(f"{info.singular}/{n}" for n in pending)
    )
    raise typer.Exit(EXIT_DIFFERS)


def _wait_watching(
    vp: Client, info: KindInfo, selector: str | None, met: Callable[[dict[str, Any] | None], bool], deadline: float
) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """The objects of ``info`` (with ``selector``) and those not yet ``met``, kept current from the watch
    until all are met or the deadline passes. A lost or expired watch is followed by a fresh list."""
    from controller.client.errors import ApiError, ServerUnreachable
    from specs.selector import LabelSelector

    wanted = LabelSelector.parse(selector) if selector else None
    while True:
        items, revision = vp.list_at(info.plural, selector)
        objects: dict[str, dict[str, Any] | None] = {o["metadata"]["name"]: o for o in items}
        pending = {n for n, o in objects.items() if not met(o)}
        if not pending or time.monotonic() >= deadline:
            return objects, sorted(pending)
        try:
            for event in vp.watch([info.kind], revision + 1, timeout=max(0.0, deadline - time.monotonic())):
                _wait_event(objects, event, wanted, met, pending)
                if not pending or time.monotonic() >= deadline:
                    return objects, sorted(pending)
        except ServerUnreachable as e:
            if "timed out" in str(e) and time.monotonic() >= deadline:
                return objects, sorted(pending)
        except ApiError as e:
            if e.code != 410:  # the revision was compacted: list again
                raise


def _wait_event(
    objects: dict[str, dict[str, Any] | None], event: dict[str, Any], wanted: LabelSelector | None,
    met: Callable[[dict[str, Any] | None], bool], pending: set[str],
) -> None:
    """Apply one watch event to the waited-for objects: a spec change (an object created, relabelled or
    deleted) or a status change."""
    name, value = event["name"], event.get("object")
    if event["part"] == "spec":
        if event["type"] == "DELETE" or value is None:
            if name in objects:
                objects[name] = None
        elif wanted is None or wanted.matches(value.get("metadata", {}).get("labels") or {}):
            status = (objects.get(name) or {}).get("status")
            objects[name] = {**value, **({"status": status} if status is not None else {})}
        else:
            objects.pop(name, None)  # relabelled: no longer one of those waited for
            pending.discard(name)
            return
    elif name in objects and objects[name] is not None:
        current = objects[name]
        assert current is not None
        if event["type"] == "DELETE" or value is None:
            current.pop("status", None)
        else:
            current["status"] = value
    else:
        return
    if met(objects[name]):
        pending.discard(name)
    else:
        pending.add(name)
