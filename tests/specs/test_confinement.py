"""Host paths in specs are confined to what the operator allowed (issue 9): kernels, images, block
devices, and the sockets and keys a Host URI names."""

from typing import Any

import pytest

from specs.confinement import HostPathPolicy, is_under, path_problems
from specs.kinds import parse_resource
from specs.storage import StorageDomain

SHARED = parse_resource({
    "apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": "shared"},
    "spec": {"cluster": "main", "type": "posix", "posix": {"path": "/srv/shared"}},
})
assert isinstance(SHARED, StorageDomain)
DOMAINS = {"shared": SHARED}
POLICY = HostPathPolicy.of(image_dirs=("/var/lib/vp/boot/",), block_dirs=("/dev/mapper",),
                           socket_dirs=("/tmp/lab",), key_dirs=("/etc/vp/keys",))


def vm(**boot: str) -> Any:
    return parse_resource({
        "apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": "v"},
        "spec": {"cluster": "main", "cpu": {"cores": 1}, "memory": {"size": "1Gi"}, "boot": boot},
    })


def disk(spec: dict[str, Any]) -> Any:
    return parse_resource({"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": "d"},
                           "spec": spec})


def host(uri: str) -> Any:
    return parse_resource({"apiVersion": "virtplane.io/v1", "kind": "Host", "metadata": {"name": "h"},
                           "spec": {"cluster": "main", "uri": uri}})


def fields(obj: Any, policy: HostPathPolicy = POLICY) -> list[str]:
    return [f for f, _ in path_problems(obj, policy, DOMAINS)]


def test_is_under_is_lexical_and_strict() -> None:
    assert is_under("/srv/shared/a.qcow2", "/srv/shared")
    assert not is_under("/srv/shared", "/srv/shared")
    assert not is_under("/srv/sharedother/a", "/srv/shared")
    assert not is_under("/srv/shared/../../etc/shadow", "/srv/shared")
    assert not is_under("/srv/shared/./a", "/srv/shared")
    assert not is_under("//srv/shared/a", "/srv/shared")
    assert not is_under("srv/shared/a", "/srv/shared")


@pytest.mark.parametrize("path", ["/etc/shadow", "/srv/shared/../../etc/shadow", "/var/lib/vp/bootx/k"])
def test_kernel_outside_is_refused_with_the_rule(path: str) -> None:
    problems = path_problems(vm(kernel=path), POLICY, DOMAINS)
    assert [f for f, _ in problems] == ["spec.boot.kernel"]
    assert "storage domain" in problems[0][1] and "--allowed-image-dir" in problems[0][1]
    assert "/srv/shared" in problems[0][1] and "/var/lib/vp/boot" in problems[0][1]


def test_kernel_and_initrd_inside_are_allowed() -> None:
    assert fields(vm(kernel="/var/lib/vp/boot/vmlinuz", initrd="/srv/shared/initrd.img")) == []
    assert fields(vm(kernel="/var/lib/vp/boot/vmlinuz", initrd="/etc/passwd")) == ["spec.boot.initrd"]


def test_no_allow_list_and_no_domains_allows_no_kernel() -> None:
    assert [f for f, _ in path_problems(vm(kernel="/srv/shared/k"), HostPathPolicy(), {})] == ["spec.boot.kernel"]


@pytest.mark.parametrize(
    ("source", "field", "bad"),
    [
        ({"clone": {"image": "/etc/shadow"}}, "spec.source.clone.image", True),
        ({"clone": {"image": "templates/../../../etc/shadow"}}, "spec.source.clone.image", True),
        ({"clone": {"image": "templates/base.qcow2"}}, "spec.source.clone.image", False),
        ({"clone": {"image": "/srv/shared/templates/base.qcow2"}}, "spec.source.clone.image", False),
        ({"import": {"path": "/root/.ssh/id_rsa"}}, "spec.source.import.path", True),
        ({"import": {"path": "/var/lib/vp/boot/x.img"}}, "spec.source.import.path", False),
    ],
)
def test_disk_images(source: dict[str, Any], field: str, bad: bool) -> None:
    got = fields(disk({"storageDomain": "shared", "size": "1Gi", "source": source}))
    assert got == ([field] if bad else [])


def test_relative_image_needs_a_known_domain() -> None:
    d = disk({"storageDomain": "elsewhere", "size": "1Gi", "source": {"clone": {"image": "base.qcow2"}}})
    assert fields(d) == ["spec.source.clone.image"]


@pytest.mark.parametrize(
    ("path", "bad"),
    [("/dev/vda", True), ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", False), ("/dev/disk/by-id", True),
     ("/dev/disk/by-path//vda", True), ("/dev/mapper/mpatha", False), ("/dev/sda1", True)],
)
def test_block_path(path: str, bad: bool) -> None:
    problems = path_problems(disk({"lun": {"blockPath": path}}), POLICY, DOMAINS)
    assert [f for f, _ in problems] == (["spec.lun.blockPath"] if bad else [])
    if bad:
        assert "/dev/disk/by-*/" in problems[0][1] and "--allowed-block-dir" in problems[0][1]


@pytest.mark.parametrize(
    ("uri", "bad"),
    [
        ("qemu+unix:///system?socket=/tmp/lab/hosts/h1/libvirt-sock", False),
        ("qemu+unix:///system?socket=/run/libvirt/libvirt-sock", False),
        ("qemu+unix:///system?socket=/tmp/other/sock", True),
        ("qemu+unix:///system", False),
        ("qemu+ssh://root@h1/system?keyfile=/etc/vp/keys/id_ed25519", False),
        ("qemu+ssh://root@h1/system?keyfile=/root/.ssh/id_rsa", True),
        ("qemu+ssh://root@h1/system?known_hosts=/etc/shadow", True),
        ("qemu+tls://h1/system?pkipath=/etc/vp/keys/h1", False),
        ("qemu+tls://h1/system?pkipath=/etc/pki", True),
        ("test:///default?cpus=4", False),
    ],
)
def test_uri_paths(uri: str, bad: bool) -> None:
    assert fields(host(uri)) == (["spec.uri"] if bad else [])


def test_keyfile_refused_when_no_keys_dir_is_configured() -> None:
    problems = path_problems(host("qemu+ssh://h1/system?keyfile=/etc/vp/keys/id"), HostPathPolicy(), {})
    assert problems and "--host-keys-dir" in problems[0][1] and "none configured" in problems[0][1]


def storage(block: str, path: str) -> Any:
    return parse_resource({"apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": "s"},
                           "spec": {"cluster": "main", "type": block, block: {"path": path},
                                    **({"hosts": ["h"]} if block == "local" else {})}})


@pytest.mark.parametrize(
    ("block", "path", "bad"),
    [("posix", "/etc", True), ("posix", "/", True), ("local", "/root/images", True),
     ("posix", "/srv/virtplane/shared", False), ("local", "/var/lib/libvirt/images/local", False),
     ("posix", "/data/vms", True)],
)
def test_storage_domain_directories(block: str, path: str, bad: bool) -> None:
    """A domain at /etc would make /etc/shadow an image 'under a storage domain'."""
    problems = path_problems(storage(block, path), POLICY, {})
    assert [f for f, _ in problems] == ([f"spec.{block}.path"] if bad else [])
    if bad:
        assert "--allowed-storage-dir" in problems[0][1]
    allowed = HostPathPolicy.of(storage_dirs=("/data",))
    assert path_problems(storage("posix", "/data/vms"), allowed, {}) == []


@pytest.mark.parametrize(
    ("block", "where", "bad"),
    [("nfs", "/etc", True), ("gluster", "/usr/lib", True), ("nfs", "/var/lib/virtplane/mnt/n", False),
     ("gluster", "/srv/mnt/g", False)],
)
def test_mount_paths_of_network_domains(block: str, where: str, bad: bool) -> None:
    """Mounting an export over /etc on every host would hide (or replace) the hosts' configuration."""
    body = {"server": "nas1", "export": "/export/vms"} if block == "nfs" else {"servers": ["gl1"], "volume": "v"}
    sd = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": "n"},
                         "spec": {"cluster": "main", "type": block, block: {**body, "mountPath": where}}})
    assert [f for f, _ in path_problems(sd, POLICY, {})] == ([f"spec.{block}.mountPath"] if bad else [])


def test_gluster_bricks_lie_under_the_storage_directories() -> None:
    """glusterd (as root) creates a brick's directory and serves what is in it: a brick at /etc would
    publish the server's configuration as a volume."""
    vol = parse_resource({"apiVersion": "virtplane.io/v1", "kind": "GlusterVolume", "metadata": {"name": "g"},
                          "spec": {"cluster": "main", "bricks": [{"host": "gl1", "path": "/srv/bricks/b1"},
                                                                 {"host": "gl2", "path": "/etc"}]}})
    problems = path_problems(vol, POLICY, {})
    assert [f for f, _ in problems] == ["spec.bricks[1].path"] and "--allowed-storage-dir" in problems[0][1]
