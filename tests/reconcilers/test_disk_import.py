"""Import planning, pure: where an import may read, and the action it plans."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from reconcilers.disk.actions import ImportImage
from reconcilers.disk.imports import import_refusal
from reconcilers.disk.plan import plan_disk, source_info
from reconcilers.domain import HostName
from specs.disk import Disk
from specs.kinds import parse_resource


def _disk(**source: Any) -> Disk:
    disk = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": "d"},
                           "spec": {"storageDomain": "sd", "source": {"import": source}}})
    assert isinstance(disk, Disk)
    return disk


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/srv/images/a.vmdk", True),
        ("/srv/images/sub/a.vmdk", True),
        ("/srv/images-evil/a.vmdk", False),
        ("/srv/images/../etc/shadow", False),
        ("/import/x.vdi", True),
        ("/etc/shadow", False),
        ("relative.vmdk", False),
    ],
)
def test_import_paths_must_be_inside_an_allowed_directory(path: str, ok: bool) -> None:
    refusal = import_refusal(path, ["/srv/images", "/import/"])
    assert (refusal is None) == ok, refusal


def test_nothing_configured_says_so() -> None:
    refusal = import_refusal("/srv/a.vmdk", [])
    assert refusal is not None and "none configured" in refusal and "--import-dir" in refusal


def test_an_import_plans_one_import_action_with_the_declared_format() -> None:
    disk = _disk(path="legacy.vmdk", format="vmdk")
    source = source_info(disk, "/srv/sd", {})
    assert source is not None and not isinstance(source, str)
    plan = plan_disk(disk, HostName("h1"), "/srv/sd", None, source)
    (action,) = plan.actions
    assert isinstance(action, ImportImage)
    assert (action.source, action.source_format, action.dest_path) == ("/srv/sd/legacy.vmdk", "vmdk", "/srv/sd/d.qcow2")
    url = _disk(url="https://images.example.org/x.vhdx", format="vhdx")
    info = source_info(url, "/srv/sd", {})
    assert info is not None and not isinstance(info, str) and info.path == "https://images.example.org/x.vhdx"


@pytest.mark.parametrize(
    "source",
    [{}, {"path": "a", "url": "http://h/a"}, {"url": "file:///etc/shadow"}, {"path": "../etc/shadow"},
     {"path": "a.img", "format": "iso"}],
)
def test_bad_import_sources_are_refused(source: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _disk(**source)
