import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from specs.schema import SCHEMA_DIR, export_schemas, main, render, stale_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_checked_in_schemas_are_up_to_date() -> None:
    stale = stale_files(SCHEMA_DIR)
    assert not stale, f"schemas/ is stale ({', '.join(stale)}): run  python -m specs.schema"


def test_stale_files_detects_changes(tmp_path: Path) -> None:
    assert main(["--check", "--dir", str(tmp_path)]) == 1  # empty dir: everything missing
    assert main(["--dir", str(tmp_path)]) == 0
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    vm = tmp_path / "VirtualMachine.json"
    vm.write_text(vm.read_text().replace("Guest memory.", "Guest mem."))
    (tmp_path / "Old.json").write_text("{}")
    assert stale_files(tmp_path) == ["Old.json", "VirtualMachine.json"]
    assert main(["--check", "--dir", str(tmp_path)]) == 1


def test_export_is_pure_and_complete() -> None:
    first, second = export_schemas(), export_schemas()
    assert first == second
    assert sorted(first) == sorted(
        [
            f"{k}.json"
            for k in (
                "Cluster",
                "Host",
                "StorageDomain",
                "GlusterVolume",
                "Network",
                "Disk",
                "VirtualMachine",
                "VirtualMachinePool",
                "Snapshot",
                "Migration",
                "Role",
                "RoleBinding",
            )
        ]
        + ["all.json"]
    )
    for name, schema in first.items():
        assert json.loads(render(schema)) == schema, name
        assert schema["$schema"].startswith("https://json-schema.org/")
    assert len(first["all.json"]["oneOf"]) == 12
    memory = first["VirtualMachine.json"]["$defs"]["MemorySpec"]["properties"]["size"]
    assert memory["description"] and memory["anyOf"][1]["pattern"]


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((str(path.relative_to(ROOT)), doc))
    return docs


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in EXAMPLES.rglob("*.yaml")))
def test_examples_point_editors_at_the_schema(path: str) -> None:
    first_line = (ROOT / path).read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first_line)
    assert match, f"{path}: first line must be '# yaml-language-server: $schema=<relative path to all.json>'"
    assert ((ROOT / path).parent / match[1]).resolve() == SCHEMA_DIR / "all.json"


def test_editor_schema_accepts_examples_and_rejects_mistakes() -> None:
    validator = jsonschema.Draft202012Validator(export_schemas()["all.json"])
    docs = _example_documents()
    assert len(docs) > 20
    for path, doc in docs:
        errors = [e.message for e in validator.iter_errors(json.loads(json.dumps(doc, default=str)))]
        assert not errors, (path, errors)
    vm = next(doc for _, doc in docs if doc["kind"] == "VirtualMachine")
    for bad in (
        {**vm, "spec": {**vm["spec"], "memory": {"size": "lots"}}},
        {**vm, "spec": {**vm["spec"], "memroy": {}}},
        {**vm, "spec": {**vm["spec"], "runStrategy": "Sometimes"}},
        {**vm, "kind": "VirtualMachin"},
        {**vm, "metadata": {"name": "Web_1"}},
    ):
        assert not validator.is_valid(bad), bad
