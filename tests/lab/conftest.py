"""Fixtures for lab tests: real libvirtd hosts and QEMU guests on this machine (root only).

- ``guest_image``: the test guest, built once and cached under $VIRTPLANE_LAB_CACHE
  (default /var/cache/virtplane-lab), with the hosts' QEMU capabilities cache;
  ``accel``: "kvm" or "tcg" from the cached probe.
- ``lab``: a Lab of two running hosts in a temporary directory, shared by a test module and
  always brought down afterwards, even when a test fails.
- ``new_lab``: a fresh, empty Lab for tests that start and stop hosts themselves; also brought down.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.dev.lab.guest import AccelProbe, GuestImage, build_guest_image, probe_accel
from controller.dev.lab.hosts import Lab

CACHE = Path(os.environ.get("VIRTPLANE_LAB_CACHE", "/var/cache/virtplane-lab"))
GUEST_CACHE = CACHE / "guest"
QEMU_CAPS = CACHE / "qemu-caps"
NEEDED = ("libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "unshare", "busybox", "apt-get", "dpkg-deb")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (mount namespaces, libvirtd)"
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    return f"lab tests need {', '.join(missing)}" if missing else None


@pytest.fixture(scope="session")
def lab_prerequisites() -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def guest_image(lab_prerequisites: None) -> GuestImage:
    return build_guest_image(GUEST_CACHE)


@pytest.fixture(scope="session")
def accel_probe(guest_image: GuestImage) -> AccelProbe:
    result = probe_accel(guest_image, GUEST_CACHE)
    print(f"\nlab accel: {result.accel} ({result.reason})")
    return result


@pytest.fixture(scope="session")
def accel(accel_probe: AccelProbe) -> str:
    return accel_probe.accel


def _bring_down(lab: Lab) -> None:
    recorded = [p for h in lab.status() for p in (h.pid, *h.qemu_pids) if p is not None]
    lab.down()
    still = [p for p in recorded if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
    assert not still, f"lab processes survived down(): {still}"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"


@pytest.fixture(scope="module")
def lab(lab_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    the_lab = Lab(tmp_path_factory.mktemp("lab"), qemu_caps_dir=QEMU_CAPS)
    try:
        the_lab.up(2)
        yield the_lab
    finally:
        _bring_down(the_lab)


@pytest.fixture
def new_lab(lab_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    the_lab = Lab(tmp_path_factory.mktemp("newlab"), qemu_caps_dir=QEMU_CAPS)
    try:
        yield the_lab
    finally:
        _bring_down(the_lab)
