"""Pure parts of the lab: configuration text, module ordering, the initramfs archive, manifests.

No root, no libvirtd: these run everywhere (not marked ``lab``)."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.dev.lab.cli import lab_manifests, render_manifests
from controller.dev.lab.guest import GuestImageError, build_cpio, order_modules
from controller.dev.lab.hosts import (
    LabError,
    LabHost,
    host_index,
    migration_ports,
    render_libvirtd_conf,
    render_qemu_conf,
)
from specs.kinds import parse_resource


def test_each_host_gets_its_own_migration_ports() -> None:
    ranges = [migration_ports(i) for i in range(1, 9)]
    ports = [set(range(low, high + 1)) for low, high in ranges]
    for i, a in enumerate(ports):
        for b in ports[i + 1 :]:
            assert not a & b
    conf = render_qemu_conf(2)
    low, high = migration_ports(2)
    assert f"migration_port_min = {low}" in conf and f"migration_port_max = {high}" in conf


def test_qemu_conf_runs_guests_as_root_without_virtlogd() -> None:
    conf = render_qemu_conf(1)
    for line in ('user = "root"', 'group = "root"', 'security_driver = "none"', 'stdio_handler = "file"'):
        assert line in conf.splitlines()


def test_libvirtd_conf_has_host_identity_and_socket_dir() -> None:
    conf = render_libvirtd_conf(Path("/lab/hosts/lab-3"), "6f1c1f3e-0000-4000-8000-000000000003")
    assert 'unix_sock_dir = "/lab/hosts/lab-3/run"' in conf
    assert 'host_uuid = "6f1c1f3e-0000-4000-8000-000000000003"' in conf


@pytest.mark.parametrize("name", ["lab-0", "lab", "host-1", "lab-x", "lab--1"])
def test_bad_host_names_are_refused(name: str) -> None:
    with pytest.raises(LabError):
        host_index(name)


def _fake_module(directory: Path, name: str, depends: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.ko").write_bytes(b"\x7fELF junk\0license=GPL\0depends=" + depends.encode() + b"\0")


def test_modules_come_after_their_dependencies(tmp_path: Path) -> None:
    _fake_module(tmp_path / "kernel/drivers/virtio", "virtio_ring", "")
    _fake_module(tmp_path / "kernel/drivers/virtio", "virtio", "virtio_ring")
    _fake_module(tmp_path / "kernel/drivers/virtio", "virtio_pci", "virtio,virtio_ring")
    _fake_module(tmp_path / "kernel/drivers/net", "virtio_net", "net_failover,virtio,virtio_ring")
    _fake_module(tmp_path / "kernel/drivers/net", "net_failover", "failover")
    _fake_module(tmp_path / "kernel/net/core", "failover", "")
    (tmp_path / "modules.builtin").write_text("kernel/drivers/acpi/button.ko\n")
    names = [name for name, _ in order_modules(tmp_path, ["virtio_pci", "virtio_net", "button"])]
    assert names == ["virtio_ring", "virtio", "virtio_pci", "failover", "net_failover", "virtio_net"]


def test_a_missing_module_is_named(tmp_path: Path) -> None:
    _fake_module(tmp_path, "virtio_blk", "virtio")
    with pytest.raises(GuestImageError, match="virtio not found"):
        order_modules(tmp_path, ["virtio_blk"])


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox to read the archive back")
def test_initramfs_archive_reads_back(tmp_path: Path) -> None:
    archive = build_cpio(
        [
            ("dev", stat.S_IFDIR | 0o755, b"", (0, 0)),
            ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
            ("init", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n", (0, 0)),
            ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
        ]
    )
    listing = subprocess.run(
        ["busybox", "cpio", "-t", "-v"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    lines = listing.splitlines()
    assert [line.split()[-1] if "->" not in line else line.split()[-3] for line in lines] == [
        "dev", "dev/console", "init", "bin/sh",
    ]  # fmt: skip
    assert lines[1].startswith("crw-------") and lines[2].startswith("-rwxr-xr-x")
    assert lines[3].endswith("bin/sh -> busybox")


def test_printed_manifests_are_valid_resources() -> None:
    hosts = [
        LabHost(
            f"lab-{i}",
            f"qemu+unix:///system?socket=/l/hosts/lab-{i}/run/libvirt-sock",
            None,
            False,
            (),
            "",
            Path(),
        )
        for i in (1, 2)
    ]
    text = render_manifests(lab_manifests(hosts, Path("/l/shared"), "lab"))
    docs = list(yaml.safe_load_all(text))
    resources = [parse_resource(doc) for doc in docs]
    assert [r.kind for r in resources] == ["Host", "Host", "StorageDomain"]
    assert resources[2].spec.posix.path == "/l/shared"
