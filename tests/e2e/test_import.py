"""Disk imports through a real server (controllers, libvirt test driver, the real qemu-img): a declared
format that matches is Ready with the image's real size, a missing, corrupt, mismatched or unreachable source
or a path outside the allowed directories is Failed with the reason — never Ready; templates are not
attached writable."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import ServerProcess, start_server
from tests.e2e.helpers import Cli, cluster_doc, host_doc, wait_for

CLUSTER = "imp"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("storage")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(d / "seed.raw"), "24M"], check=True)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(d / "seed.raw"), str(d / "app.vmdk")],
                   check=True)
    (d / "broken.vmdk").write_bytes(b"# Disk DescriptorFile\nversion=1\ngarbage\n")
    return d


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, store_dir: Path) -> Iterator[Cli]:
    etcd = EmbeddedEtcd(tmp_path_factory.mktemp("import-etcd"))
    etcd.start()
    try:
        server: ServerProcess = start_server(tmp_path_factory.mktemp("import-server"), etcd=etcd)
        try:
            c = Cli(server)
            sd = {"apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": "store"},
                  "spec": {"cluster": CLUSTER, "type": "posix", "posix": {"path": str(store_dir)}}}
            done = c("apply", "-f", "-", input=yaml.safe_dump_all([cluster_doc(CLUSTER), host_doc("h1", CLUSTER), sd]))
            assert done.returncode == 0, done.stderr
            yield c
        finally:
            server.stop()
    finally:
        etcd.stop()


def _disk(name: str, **source: Any) -> dict[str, Any]:
    return {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": name},
            "spec": {"storageDomain": "store", "source": {"import": source}}}


def _settled(cli: Cli, name: str) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        obj = cli.obj("disk", name) or {}
        s: dict[str, Any] = obj.get("status") or {}
        return s if s.get("phase") in ("Ready", "Failed") else None

    return wait_for(f"disk {name} Ready or Failed", status, 60)


def _reason(status: dict[str, Any]) -> tuple[str, str]:
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    return ready["reason"], ready.get("message", "")


def test_a_vmdk_in_the_storage_domain_imports_with_its_real_size(cli: Cli) -> None:
    assert cli("apply", "-f", "-", input=yaml.safe_dump(_disk("app", path="app.vmdk", format="vmdk"))).returncode == 0
    status = _settled(cli, "app")
    assert status["phase"] == "Ready", status
    assert status["capacity"] == 24 << 20  # from qemu-img info of the real file


@pytest.mark.parametrize(
    ("name", "source", "reason", "words"),
    [
        ("missing-inside", {"path": "nonexistent.vmdk", "format": "vmdk"}, "SourceMissing", "no such file"),
        ("mismatch", {"path": "app.vmdk", "format": "vhdx"}, "FormatMismatch", "declared vhdx"),
        ("corrupt", {"path": "broken.vmdk", "format": "vmdk"}, "SourceCorrupt", "broken.vmdk"),
        ("gone", {"url": "http://127.0.0.1:9/nothing.vmdk", "format": "vmdk"}, "SourceUnreachable", "nothing.vmdk"),
    ],
)
def test_bad_sources_fail_with_the_reason_never_ready(
    cli: Cli, name: str, source: dict[str, Any], reason: str, words: str
) -> None:
    assert cli("apply", "-f", "-", input=yaml.safe_dump(_disk(name, **source))).returncode == 0
    status = _settled(cli, name)
    assert status["phase"] == "Failed", status
    got_reason, message = _reason(status)
    assert got_reason == reason and words in message, (got_reason, message)
    described = cli("describe", f"disk/{name}")
    assert reason in described.stdout


@pytest.mark.parametrize("path", ["/etc/shadow", "/var/tmp/nonexistent.vmdk", "../../etc/passwd"])
def test_a_source_outside_the_allowed_directories_is_refused_at_apply(cli: Cli, path: str) -> None:
    """Host paths are confined when the spec is applied (exit 2, the field path, nothing stored); the
    controller refuses them again (ImportRefused) for an object that reached etcd another way."""
    done = cli("apply", "-f", "-", input=yaml.safe_dump(_disk("escape", path=path, format="raw")))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "spec.source.import.path" in done.stderr and "nothing was written" in done.stderr
    assert cli.obj("disk", "escape") is None


def test_a_template_is_not_attached_writable(cli: Cli) -> None:
    tmpl = _disk("golden", path="app.vmdk", format="vmdk")
    tmpl["spec"]["template"] = True
    vm = {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": "uses-golden"},
          "spec": {"cluster": CLUSTER, "cpu": {"cores": 1}, "memory": {"size": "256Mi"},
                   "disks": [{"disk": "golden"}]}}
    assert cli("apply", "-f", "-", input=yaml.safe_dump_all([tmpl, vm])).returncode == 0

    def reason() -> str | None:
        conds = ((cli.obj("vm", "uses-golden") or {}).get("status") or {}).get("conditions") or []
        return next((c["reason"] for c in conds if c["type"] == "Ready"), None)

    assert wait_for("template refused", lambda: reason() == "TemplateNotWritable" or None, 30)
    vm["spec"]["disks"] = [{"disk": "golden", "readOnly": True}]
    assert cli("apply", "-f", "-", input=yaml.safe_dump(vm)).returncode == 0
    assert wait_for("read-only template attached", lambda: reason() == "Running" or None, 30)


def test_an_upload_with_a_progress_bar_is_imported(cli: Cli, store_dir: Path) -> None:
    up = _disk("uploaded", upload=True, format="vmdk")
    assert cli("apply", "-f", "-", input=yaml.safe_dump(up)).returncode == 0
    wait_for("waiting for the upload", lambda: _reason((cli.obj("disk", "uploaded") or {}).get("status") or
                                                        {"conditions": [{"type": "Ready", "reason": ""}]})[0]
             == "WaitingForUpload" or None, 30)
    done = cli("disk", "upload", "uploaded", str(store_dir / "app.vmdk"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "uploaded" in done.stdout and "app.vmdk -> disk/uploaded" in done.stderr  # the progress bar's line
    status = _settled(cli, "uploaded")
    assert status["phase"] == "Ready" and status["capacity"] == 24 << 20, status
    wrong = cli("disk", "upload", "app", str(store_dir / "app.vmdk"))
    assert wrong.returncode == 2 and "does not take an upload" in wrong.stderr, wrong.stderr
