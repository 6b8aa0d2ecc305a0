"""Imports run one way: controller -> reconcilers -> specs. Only controller/ may do I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IO_MODULES = {
    "aetcd",
    "libvirt",
    "libvirtaio",
    "anyio",
    "asyncio",
    "httpx",
    "starlette",
    "uvicorn",
    "ldap3",
    "typer",
    "rich",
    "grpc",
    "subprocess",
    "socket",
    "watchfiles",
    "os",
    "time",
    "random",
    "threading",
}
FORBIDDEN = {
    "specs": IO_MODULES | {"reconcilers", "controller"},
    "reconcilers": IO_MODULES | {"controller"},
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(imports(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package}/ must stay pure (no I/O, no upward imports): {bad}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import libvirt\nfrom controller.store import Store\n")
    assert imports(bad) & FORBIDDEN["reconcilers"] == {"libvirt", "controller"}
