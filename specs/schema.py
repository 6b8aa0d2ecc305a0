"""JSON Schema of every kind, for editors and for the checked-in ``schemas/`` directory.

``python -m specs.schema`` writes schemas/; ``python -m specs.schema --check`` exits 1 when it is stale.
A YAML file opts in with ``# yaml-language-server: $schema=../schemas/all.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from specs.kinds import KINDS

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


def export_schemas() -> dict[str, dict[str, Any]]:
    """``{"<Kind>.json": schema, ..., "all.json": one schema accepting any kind}``. Pure."""
    out: dict[str, dict[str, Any]] = {}
    for info in KINDS.values():
        schema = info.model.model_json_schema(mode="validation")
        out[f"{info.kind}.json"] = {"$schema": DIALECT, "$id": f"{info.kind}.json", **schema}
    models = tuple(info.model for info in KINDS.values())
    union: Any = Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007
    combined = TypeAdapter(union).json_schema(mode="validation")
    out["all.json"] = {
        "$schema": DIALECT,
        "$id": "all.json",
        "title": "virtplane resource",
        "description": "Any virtplane.io/v1 object; the kind field selects the schema.",
        **combined,
    }
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of files in ``directory`` that differ from export_schemas() (missing or extra count too)."""
    expected = {name: render(schema) for name, schema in export_schemas().items()}
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    stale = [
        name
        for name, text in expected.items()
        if name not in present or (directory / name).read_text() != text
    ]
    stale += sorted(present - expected.keys())
    return sorted(stale)


def write_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    expected = export_schemas()
    for name, schema in expected.items():
        (directory / name).write_text(render(schema))
    for extra in directory.glob("*.json"):
        if extra.name not in expected:
            extra.unlink()
    return sorted(expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specs.schema", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if schemas/ is not up to date")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="output directory (default: schemas/)")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.dir)
        if stale:
            print(f"schemas are stale: {', '.join(stale)}; run: python -m specs.schema", file=sys.stderr)
            return 1
        return 0
    for name in write_schemas(args.dir):
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
