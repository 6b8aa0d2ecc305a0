"""What the lab's storage servers look like from outside: one frozen description per server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

StorageKind = Literal["nfs", "gluster", "iscsi"]
STORAGE_KINDS: tuple[StorageKind, ...] = ("nfs", "gluster", "iscsi")


class StorageError(Exception):
    """A lab storage server cannot do what was asked; the message says what and where to look."""


@dataclass(frozen=True)
class NfsServer:
    """nfs-ganesha (FSAL VFS) exporting one directory over NFSv3/v4, with its own rpcbind.

    QEMU reaches it with libnfs: ``nfs://<address><export>/<image>`` (the export is the server's real
    path; NFSv3 mounts by path, not by the NFSv4 pseudo path).
    """

    kind: Literal["nfs"]
    running: bool
    address: str
    export: Path
    nfs_port: int
    mount_port: int
    rpcbind_pid: int | None
    ganesha_pid: int | None
    dir: Path

    def url(self, image: str) -> str:
        return f"nfs://{self.address}{self.export}/{image}"

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p for p in (self.ganesha_pid, self.rpcbind_pid) if p is not None)


@dataclass(frozen=True)
class GlusterServer:
    """glusterd and one started volume (one brick per ``bricks`` entry, ``replica`` copies).

    Hosts reach it by a FUSE mount (libvirt ``netfs`` pool, ``<format type='glusterfs'/>``) at
    ``mount_path``, the same path on every host, each mounting it in its own namespace.
    """

    kind: Literal["gluster"]
    running: bool
    host: str  # the brick/volfile host name (never 127.0.0.1: gluster refuses it)
    port: int  # glusterd's management port (bricks fetch their volfile from it; must be 24007)
    volume: str
    bricks: tuple[Path, ...]
    replica: int
    mount_path: Path
    glusterd_pid: int | None
    brick_pids: tuple[int, ...]
    dir: Path

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p for p in (self.glusterd_pid, *self.brick_pids) if p is not None)


@dataclass(frozen=True)
class IscsiServer:
    """tgtd with one target, a file-backed LUN and a CHAP account.

    ``secret_file`` holds the CHAP password (mode 0600); it is never printed. ``secret_usage`` is the
    usage name the lab suggests for the libvirt secret (``<secret type='iscsi' usage='...'/>``).
    """

    kind: Literal["iscsi"]
    running: bool
    portal: str  # host:port
    iqn: str
    lun: int
    lun_file: Path
    lun_size: int
    chap_user: str
    secret_file: Path
    secret_usage: str
    control_port: int  # tgtadm -C <control_port>
    tgtd_pid: int | None
    dir: Path

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.tgtd_pid,) if self.tgtd_pid is not None else ()


StorageServer = NfsServer | GlusterServer | IscsiServer


def parse_storage_kinds(text: str) -> tuple[StorageKind, ...]:
    """``"nfs,iscsi"`` -> ("nfs", "iscsi") in canonical order; empty text -> ()."""
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(STORAGE_KINDS))
    if unknown:
        raise StorageError(f"unknown storage {', '.join(unknown)}; expected any of {','.join(STORAGE_KINDS)}")
    return tuple(kind for kind in STORAGE_KINDS if kind in wanted)
