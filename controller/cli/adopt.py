"""`adopt host/NAME`: write YAML reproducing foreign domains of a host, for Git; `apply` takes them over."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any

import typer

from controller.cli.common import EXIT_INVALID, client, fail, reporting, split_ref
from controller.cli.output import err


def adopt(
    ref: Annotated[str, typer.Argument(help="The host, host/NAME.")],
    domains: Annotated[
        list[str] | None, typer.Option("--domain", help="A foreign domain to adopt (repeat for more).")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every foreign domain of the host.")] = False,
    directory: Annotated[Path, typer.Option("-d", "--dir", help="Where to write DIR/<plural>/<name>.yaml.")] = Path(
        "."
    ),
) -> None:
    """Write VirtualMachine (and Disk, StorageDomain, Network) YAML that reproduces foreign domains of a host.
    Apply it to take the domains over: they are stamped, never redefined or restarted. A domain using what a
    spec cannot represent is listed with the reasons and not written (exit 2)."""
    info, host = split_ref(ref)
    if info.kind != "Host" or not host:
        fail(f"expected host/NAME, got {ref!r}", EXIT_INVALID)
    if bool(domains) == everything:
        fail("name the domains with --domain D (repeatable), or give --all", EXIT_INVALID)
    with reporting(), client() as vp:
        result = vp.adopt(host, domains or (), everything=everything)
    written = _write(directory, [o for a in result["adopted"] for o in a["objects"]])
    for a in result["adopted"]:
        typer.echo(f"domain {a['domain']}: adoptable ({len(a['objects'])} object(s))")
    for path in written:
        typer.echo(f"wrote {path}")
    for r in result["refused"]:
        err.print(f"[red]domain {r['domain']} cannot be adopted:[/]")
        for problem in r["problems"]:
            err.print(f"[red]  - {problem}[/]")
    if result["refused"]:
        fail(f"{len(result['refused'])} domain(s) not adopted (nothing written for them)", EXIT_INVALID)
    if not result["adopted"]:
        err.print(f"[dim]no foreign domain on {host}[/]")


def _write(directory: Path, objects: list[dict[str, Any]]) -> list[Path]:
    from ruamel.yaml import YAML

    from specs.kinds import KINDS

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    plural = {i.kind: i.plural for i in KINDS.values()}
    files: dict[Path, str] = {}
    for obj in objects:  # a StorageDomain or Network shared by several adopted domains comes once
        path = directory / plural[obj["kind"]] / f"{obj['metadata']['name']}.yaml"
        buf = io.StringIO()
        yaml.dump(obj, buf)
        files.setdefault(path, buf.getvalue())
    clashes = [str(p) for p in files if p.exists()]
    if clashes:
        fail(f"{', '.join(clashes)} exist(s); nothing written (choose another -d DIR)", EXIT_INVALID)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)
