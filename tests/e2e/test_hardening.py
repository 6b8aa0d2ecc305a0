"""Hardening (issue 9) through the real CLI and server: what an attacker with API access tried, refused
with exit 2, the field path and the rule, and nothing written (checked with etcdctl)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import Vp, etcdctl_run


def spec_keys(etcd: EmbeddedEtcd) -> list[str]:
    return etcdctl_run(etcd.endpoint, "get", "--prefix", "/virtplane/specs/", "--keys-only").split()


def host_yaml(uri: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: virtplane.io/v1
        kind: Host
        metadata: {{name: h1}}
        spec: {{cluster: main, uri: "{uri}"}}
        """)


def apply_text(vp: Vp, tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    done = vp("apply", "-f", str(path))
    return done.returncode, done.stdout + done.stderr


def test_host_uri_that_runs_a_program_is_refused(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    code, out = apply_text(vp, tmp_path, host_yaml(f"qemu+ssh://127.0.0.1/system?command={script}"))
    assert code == 2, out
    assert "in.yaml:4" in out and "spec.uri" in out and "'command' is not allowed" in out
    assert spec_keys(etcd) == [] and not marker.exists()


def test_test_uri_naming_a_file_is_refused(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    code, out = apply_text(vp, tmp_path, host_yaml("test:///etc/shadow"))
    assert code == 2 and "the only test URI is test:///default" in out, out
    assert spec_keys(etcd) == []


def test_socket_outside_the_allowed_dirs_is_refused_by_the_server(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    code, out = apply_text(vp, tmp_path, host_yaml("qemu+unix:///system?socket=/var/tmp/other/libvirt-sock"))
    assert code == 2, out
    assert "spec.uri" in out and "--allowed-socket-dir" in out and "in.yaml:1" in out
    assert spec_keys(etcd) == []


def test_host_paths_outside_storage_and_allow_list_are_refused(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        apiVersion: virtplane.io/v1
        kind: StorageDomain
        metadata: {name: shared}
        spec: {cluster: main, type: posix, posix: {path: /srv/virtplane/shared}}
        ---
        apiVersion: virtplane.io/v1
        kind: Disk
        metadata: {name: stolen}
        spec: {storageDomain: shared, size: 1Gi, source: {clone: {image: /etc/shadow}}}
        ---
        apiVersion: virtplane.io/v1
        kind: Disk
        metadata: {name: raw}
        spec: {lun: {blockPath: /dev/vda}}
        ---
        apiVersion: virtplane.io/v1
        kind: VirtualMachine
        metadata: {name: v}
        spec:
          cluster: main
          cpu: {cores: 1}
          memory: {size: 512Mi}
          boot: {kernel: /etc/shadow}
        """)
    code, out = apply_text(vp, tmp_path, text)
    assert code == 2, out
    for where, field in (("in.yaml:6", "spec.source.clone.image"), ("in.yaml:11", "spec.lun.blockPath"),
                         ("in.yaml:16", "spec.boot.kernel")):
        assert f"{where}:1: {field}" in out, out
    assert "/dev/disk/by-*/" in out and "--allowed-image-dir" in out
    assert spec_keys(etcd) == []
    # Inside the storage domain: accepted.
    ok = text.replace("/etc/shadow}}}", "/srv/virtplane/shared/base.qcow2}}}").replace(
        "/dev/vda", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4").replace(
        "kernel: /etc/shadow", "kernel: /srv/virtplane/shared/boot/vmlinuz")
    code, out = apply_text(vp, tmp_path, ok)
    assert code == 0, out
    assert len(spec_keys(etcd)) == 4
