"""Which host paths a spec may name: the operator's allow-lists, checked before anything is stored or done.

The server runs as root and its hosts' libvirtd too, so a path in a spec is read (a kernel, an image to
clone or import), opened (a block device) or connected to (a libvirt socket, an ssh key) with full rights.
A spec may therefore only name paths the operator allowed when starting the server:

- ``boot.kernel``/``boot.initrd`` of a VM, ``source.clone.image``/``source.import.path`` of a Disk: under
  the directory of a StorageDomain (a path relative to the Disk's domain stays inside it), or under an
  ``--allowed-image-dir``;
- ``lun.blockPath``: under ``/dev/disk/by-*/`` (stable names of whole disks and partitions), or under an
  ``--allowed-block-dir``;
- a Host URI's ``socket``: under an ``--allowed-socket-dir`` (the lab directory, ``--lab-dir``, is one)
  or libvirt's own ``/run/libvirt/``; ``keyfile``, ``pkipath``, ``known_hosts``: under ``--host-keys-dir``;
- a StorageDomain's directory (``posix.path``, ``local.path``) and where hosts mount one (``nfs.mountPath``,
  ``gluster.mountPath``), and a GlusterVolume's brick directories (``bricks[].path``, created and filled
  by glusterd as root): under ``/srv``, ``/var/lib/libvirt/images``, ``/var/lib/virtplane``, the lab
  directory or an ``--allowed-storage-dir`` (else a domain at ``/etc`` would make ``/etc/shadow`` "an
  image under a storage domain", a mount there would hide ``/etc``, a brick there would serve it).

Paths are compared lexically after normalisation (no ``..``, no ``//``): symlinks inside an allowed
directory are the operator's business. Pure: the server passes in the policy and the storage domains.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from specs.disk import Disk
from specs.gluster import GlusterVolume
from specs.host import URI_PATH_PARAMS, Host, uri_query
from specs.meta import Resource
from specs.storage import StorageDomain
from specs.vm import VirtualMachine

BLOCK_PREFIX = "/dev/disk/by-"
LIBVIRT_SOCKET_DIRS = ("/run/libvirt", "/var/run/libvirt")
DEFAULT_STORAGE_DIRS = ("/srv", "/var/lib/libvirt/images", "/var/lib/virtplane")


@dataclass(frozen=True)
class HostPathPolicy:
    """The server's allow-lists (absolute, normalised directories)."""

    image_dirs: tuple[str, ...] = ()
    block_dirs: tuple[str, ...] = ()
    socket_dirs: tuple[str, ...] = ()
    key_dirs: tuple[str, ...] = ()
    storage_dirs: tuple[str, ...] = DEFAULT_STORAGE_DIRS

    @classmethod
    def of(cls, *, image_dirs: tuple[str, ...] = (), block_dirs: tuple[str, ...] = (),
           socket_dirs: tuple[str, ...] = (), key_dirs: tuple[str, ...] = (),
           storage_dirs: tuple[str, ...] = ()) -> HostPathPolicy:
        def norm(dirs: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(posixpath.normpath(str(d)) for d in dirs)

        return cls(norm(image_dirs), norm(block_dirs), norm(socket_dirs), norm(key_dirs),
                   (*DEFAULT_STORAGE_DIRS, *norm(storage_dirs)))


Problem = tuple[str, str]  # (field path, message)


def is_under(path: str, directory: str) -> bool:
    """``path`` (absolute) lies strictly inside ``directory``, lexically, after normalisation."""
    if not path.startswith("/") or "\x00" in path:
        return False
    normal = posixpath.normpath(path)
    if normal != path.rstrip("/") or normal.startswith("//"):
        return False  # '..', '.', '//' in the path: say it plainly instead
    base = posixpath.normpath(directory)
    return normal.startswith(base.rstrip("/") + "/")


def storage_dirs(domains: Mapping[str, StorageDomain], policy: HostPathPolicy | None = None) -> dict[str, str]:
    """Domain name -> its image directory (posix/local domains; network domains have none on this side);
    with ``policy``, only domains whose directory it allows."""
    dirs: dict[str, str] = {}
    for name, sd in domains.items():
        if policy is not None and _storage_problems(sd, policy):
            continue
        block = sd.spec.posix or sd.spec.local
        if block is not None:
            dirs[name] = posixpath.normpath(block.path)
    return dirs


def path_problems(obj: Resource, policy: HostPathPolicy, domains: Mapping[str, StorageDomain]) -> list[Problem]:
    """Every host path in ``obj`` that the policy does not allow, with the rule in the message."""
    dirs = storage_dirs(domains, policy)
    if isinstance(obj, Host):
        return _uri_problems(obj.spec.uri, policy)
    if isinstance(obj, VirtualMachine):
        problems = []
        for name in ("kernel", "initrd"):
            value = getattr(obj.spec.boot, name)
            if value is not None and not _image_allowed(value, None, dirs, policy):
                problems.append((f"spec.boot.{name}", _image_rule(value, policy, dirs)))
        return problems
    if isinstance(obj, Disk):
        return _disk_problems(obj, policy, dirs)
    if isinstance(obj, StorageDomain):
        return _storage_problems(obj, policy)
    if isinstance(obj, GlusterVolume):
        return [problem for i, brick in enumerate(obj.spec.bricks)
                if (problem := _storage_dir_problem(f"spec.bricks[{i}].path", brick.path, "a brick directory",
                                                    policy))]
    return []


def _storage_problems(sd: StorageDomain, policy: HostPathPolicy) -> list[Problem]:
    named = [(f"spec.{b}.path", getattr(sd.spec, b).path, "a storage domain's directory")
             for b in ("posix", "local") if getattr(sd.spec, b) is not None]
    named += [(f"spec.{b}.mountPath", getattr(sd.spec, b).mountPath, "where hosts mount a storage domain")
              for b in ("nfs", "gluster") if getattr(sd.spec, b) is not None and getattr(sd.spec, b).mountPath]
    return [problem for field_path, path, what in named
            if (problem := _storage_dir_problem(field_path, path, what, policy))]


def _storage_dir_problem(field_path: str, path: str, what: str, policy: HostPathPolicy) -> Problem | None:
    if any(is_under(path, d) for d in policy.storage_dirs):
        return None
    return (field_path, f"{path!r} is not allowed: {what} must lie under {', '.join(policy.storage_dirs)}; "
            "the operator allows more with `virtplane server --allowed-storage-dir DIR`")


def _disk_problems(disk: Disk, policy: HostPathPolicy, dirs: Mapping[str, str]) -> list[Problem]:
    spec = disk.spec
    problems: list[Problem] = []
    own = dirs.get(spec.storageDomain) if spec.storageDomain else None
    source = spec.source
    named = (
        ("spec.source.clone.image", source.clone.image if source and source.clone else None),
        ("spec.source.import.path", source.import_.path if source and source.import_ else None),
    )
    for field_path, path in named:
        if path is not None and not _image_allowed(path, own, dirs, policy):
            problems.append((field_path, _image_rule(path, policy, dirs)))
    if spec.lun is not None and spec.lun.blockPath is not None:
        path = spec.lun.blockPath
        ok = any(is_under(path, d) for d in policy.block_dirs) or (
            path.startswith(BLOCK_PREFIX) and is_under(path, "/dev/disk") and path.count("/") >= 4
        )
        if not ok:
            extra = f" or under {', '.join(policy.block_dirs)}" if policy.block_dirs else ""
            problems.append((
                "spec.lun.blockPath",
                f"{path!r} is not allowed: a block device must be named under /dev/disk/by-*/ "
                f"(e.g. /dev/disk/by-id/wwn-0x5000...){extra}; the operator allows more with "
                "`virtplane server --allowed-block-dir DIR`",
            ))
    return problems


def _image_allowed(path: str, own_dir: str | None, dirs: Mapping[str, str], policy: HostPathPolicy) -> bool:
    if not path.startswith("/"):
        # Relative to the Disk's own storage domain: fine as long as it stays inside.
        parts = path.split("/")
        return own_dir is not None and ".." not in parts and "\x00" not in path
    return any(is_under(path, d) for d in (*dirs.values(), *policy.image_dirs))


def _image_rule(path: str, policy: HostPathPolicy, dirs: Mapping[str, str]) -> str:
    allowed = sorted({*dirs.values(), *policy.image_dirs})
    where = ", ".join(allowed) if allowed else "none configured"
    return (
        f"{path!r} is not allowed: an image or kernel must lie under a storage domain's directory or an "
        f"--allowed-image-dir of the server (now: {where}), with no '..'; a relative path is relative "
        "to the Disk's storage domain"
    )


def _uri_problems(uri: str, policy: HostPathPolicy) -> list[Problem]:
    problems: list[Problem] = []
    for key, value in uri_query(uri):
        if key not in URI_PATH_PARAMS:
            continue
        if key == "socket":
            allowed = (*policy.socket_dirs, *LIBVIRT_SOCKET_DIRS)
            flag = "--allowed-socket-dir (or --lab-dir)"
        else:
            allowed = policy.key_dirs
            flag = "--host-keys-dir"
        if not any(is_under(value, d) for d in allowed):
            where = ", ".join(allowed) if allowed else "none configured"
            problems.append((
                "spec.uri",
                f"URI parameter {key}={value!r} is not allowed: it must lie under a directory the server "
                f"allows with {flag} (now: {where})",
            ))
    return problems
