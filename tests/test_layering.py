"""Imports run one way: controller -> reconcilers -> specs, and inside controller/ each folder is a layer.

- specs/ and reconcilers/ are pure: no I/O library, nothing above them.
- Inside controller/ a folder may import only the folders listed for it in ``CONTROLLER_LAYERS`` (the CLI
  only the client side; the API not the controllers; the runtime not the API ...).
- Third-party I/O libraries stay in the folder that owns that boundary (libvirt in adapters/, etcd in store/).
- Only controller/store/ knows etcd keys: no other module holds a "/virtplane/..." key or reaches into the
  store's private modules.
"""

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

# controller/<folder> -> the controller folders it may import (besides itself). "*" = any.
CONTROLLER_LAYERS: dict[str, set[str]] = {
    "common": set(),
    "store": {"common"},
    "adapters": {"common"},
    "runtime": {"common", "store", "adapters"},
    "controllers": {"common", "store", "adapters", "runtime"},
    "api": {"common", "store", "adapters"},  # adapters: the directory (LDAP) client
    "ui": {"common", "api"},  # the web console: pages over the API's own handlers
    "client": {"common"},
    "gitops": {"common"},
    "cli": {"common", "client", "gitops"},
    "server": {"common", "store", "adapters", "runtime", "controllers", "api", "ui", "client", "cli"},
    "dev": {"*"},
    "__init__": set(),
    "main": {"*"},  # controller/main.py: the entry point wires the CLI to the server side
}
# Single modules allowed one more layer, with the reason.
FILE_EXCEPTIONS: dict[str, set[str]] = {
    # The `lab` fence agent is the lab's power switch: it drives the lab's hosts in-process.
    "controller/adapters/power/lab.py": {"dev"},
}
# Third-party libraries that belong to one boundary: library -> folders allowed to import it.
OWNED_LIBRARIES: dict[str, set[str]] = {
    "libvirt": {"adapters"},
    "libvirtaio": {"adapters"},
    "aetcd": {"store"},
    "grpc": {"store"},
    "starlette": {"api", "ui"},
    "jinja2": {"ui"},
    "uvicorn": {"server"},
    "ldap3": {"adapters", "dev"},
    "httpx": {"client", "adapters", "dev"},  # adapters: the Redfish probe
}


def imports(path: Path) -> set[str]:
    """Top-level packages imported by ``path``."""
    return {name.split(".")[0] for name in imported_modules(path)}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layer_of(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root / "controller")
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def controller_files() -> list[Path]:
    return sorted((ROOT / "controller").rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules found in {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(imports(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package}/ must stay pure (no I/O, no upward imports): {bad}"


def layer_violations(path: Path, root: Path = ROOT) -> list[str]:
    layer = layer_of(path, root)
    allowed = CONTROLLER_LAYERS.get(layer)
    if allowed is None:
        return [f"{layer} is not a known layer of controller/ (add it to CONTROLLER_LAYERS)"]
    allowed = allowed | FILE_EXCEPTIONS.get(str(path.relative_to(root)), set())
    problems = []
    for module in imported_modules(path):
        parts = module.split(".")
        if parts[0] == "controller" and len(parts) > 1:
            target = parts[1]
            if target not in (layer, "controller") and "*" not in allowed and target not in allowed:
                problems.append(f"imports {module} ({layer} may use {sorted(allowed) or 'nothing'})")
            if target == "store" and layer != "store" and len(parts) > 2 and parts[2] in ("_etcd", "codec"):
                problems.append(f"reaches into the store's private module {module}")
        owners = OWNED_LIBRARIES.get(parts[0])
        if owners is not None and layer not in owners:
            problems.append(f"imports {parts[0]} (only {', '.join(sorted(owners))} may)")
    if layer == "runtime" and path.name == "workqueue.py":
        problems += [f"imports {m}: the generic work queue knows no libvirt" for m in imported_modules(path)
                     if m.split(".")[0] == "libvirt" or m.startswith("controller.adapters")]
    return problems


def etcd_keys(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("/virtplane/")]


def test_controller_folders_import_only_their_lower_layers() -> None:
    bad = {str(f.relative_to(ROOT)): v for f in controller_files() if (v := layer_violations(f))}
    assert not bad, f"layering of controller/ broken: {bad}"


def test_only_the_store_knows_etcd_keys() -> None:
    bad = {str(f.relative_to(ROOT)): keys for f in controller_files()
           if layer_of(f) != "store" and (keys := etcd_keys(f))}
    assert not bad, f"etcd keys outside controller/store/: {bad}"


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("import libvirt\nfrom controller.store import Store\n")
    assert imports(bad) & FORBIDDEN["reconcilers"] == {"libvirt", "controller"}


def test_the_layer_check_sees_violations(tmp_path: Path) -> None:
    fake = tmp_path / "controller" / "cli"
    fake.mkdir(parents=True)
    module = fake / "bad.py"
    module.write_text("import libvirt\nfrom controller.store._etcd import EtcdKV\nfrom controller.api.app import Api\n"
                      "KEY = '/virtplane/specs/Host/x'\n")
    problems = layer_violations(module, tmp_path)
    assert any("controller.store._etcd" in p for p in problems)
    assert any("controller.api.app" in p for p in problems)
    assert any("libvirt" in p for p in problems)
    assert etcd_keys(module) == ["/virtplane/specs/Host/x"]
