"""`export`: specs from the store back to YAML files, keeping comments where a file already exists."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.cli.common import EXIT_INVALID, client, fail, kind_info, reporting
from controller.cli.output import err

if TYPE_CHECKING:  # imported where used, so that `virtplane --help` starts fast
    from ruamel.yaml import YAML

    from specs.meta import Resource


def _yaml() -> YAML:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def export(
    directory: Annotated[Path, typer.Option("-d", "--dir", help="Directory of YAML to write or update.")] = Path("."),
    kinds: Annotated[
        list[str] | None, typer.Argument(help="Kinds to export (default: every Git-managed kind).")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--source", help="Only objects last applied with this --source.")
    ] = None,
) -> None:
    """Write the specs in the store as YAML: update the file that already holds an object (comments and the
    values you wrote kept), or create DIR/<plural>/<name>.yaml. Objects a controller made (a pool's VMs and
    disks) are not exported; with --source, neither are objects applied from another source."""
    from controller.gitops.export import update_document
    from controller.gitops.manifest import load_paths
    from specs.kinds import KINDS, parse_resource

    infos = [kind_info(k) for k in kinds] if kinds else [i for i in KINDS.values() if i.gitops]
    existing: dict[tuple[str, str], Path] = {}
    if directory.exists() and any(directory.rglob("*.y*ml")):  # an empty directory is a fine target
        with reporting():
            for obj in load_paths([str(directory)]):
                existing[(obj.resource.kind, obj.resource.metadata.name)] = Path(obj.location.path)
    wanted: dict[Path, list[Resource]] = {}
    with reporting(), client() as vp:
        for info in infos:
            for item in vp.list(info.plural):
                meta = item.get("metadata") or {}
                if meta.get("ownerReferences") or (source is not None and meta.get("source") != source):
                    continue
                item.pop("status", None)
                resource = parse_resource(_user_part(item))
                key = (info.kind, item["metadata"]["name"])
                path = existing.get(key) or directory / info.plural / f"{key[1]}.yaml"
                wanted.setdefault(path, []).append(resource)
    refused = [f"{path}: {why}" for path in wanted if (why := unsafe_target(directory, path))]
    if refused:
        for line in refused:
            err.print(f"[red]{line}[/]")
        fail(f"{len(refused)} target(s) refused (export writes only regular files inside {directory}, never "
             "through a symlink); nothing was written", EXIT_INVALID)
    yaml = _yaml()
    written = 0
    for path, resources in wanted.items():
        by_key = {(r.kind, r.metadata.name): r for r in resources}
        docs: list[Any] = []
        if path.exists():
            docs = [d for d in yaml.load_all(path.read_text()) if d is not None]
            for i, doc in enumerate(docs):
                key = (doc.get("kind"), (doc.get("metadata") or {}).get("name"))
                if key in by_key:
                    want = by_key.pop(key)
                    docs[i] = update_document(doc, _compact(want), want)
        docs += [_compact(r) for r in by_key.values()]
        buf = io.StringIO()
        yaml.dump_all(docs, buf)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != buf.getvalue():
            _replace(path, buf.getvalue())
            written += 1
            typer.echo(f"wrote {path}")
    err.print(f"[dim]{sum(len(b) for b in wanted.values())} object(s) exported; {written} file(s) changed[/]")


def _compact(resource: Resource) -> dict[str, Any]:
    from controller.common.wire import spec_to_wire

    body = spec_to_wire(resource)
    assert body is not None
    return body


def unsafe_target(directory: Path, path: Path) -> str | None:
    """Why ``path`` may not be written by an export into ``directory`` (None: it may): it must lie inside
    the directory, and neither it nor any directory between must be a symlink."""
    base = directory.absolute()
    target = path.absolute()
    try:
        relative = target.relative_to(base)
    except ValueError:
        return f"outside {directory}"
    if ".." in relative.parts:
        return f"outside {directory}"
    current = base
    for part in relative.parts:
        current = current / part
        if current.is_symlink():
            return f"{current} is a symlink; refusing to write through it"
        if not current.exists():
            break
    if target.exists() and not target.is_file():
        return "not a regular file"
    return None


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to a new file beside ``path`` and rename it over ``path``: a symlink appearing at
    ``path`` meanwhile is replaced, never followed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _user_part(item: dict[str, Any]) -> dict[str, Any]:
    meta = item.get("metadata") or {}
    return {**item, "metadata": {k: meta[k] for k in ("name", "labels", "annotations") if k in meta}}
