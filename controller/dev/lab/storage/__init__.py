"""Storage servers of `virtplane lab`: NFS (nfs-ganesha), GlusterFS (glusterd) and iSCSI (tgtd).

>>> storage = LabStorage("/var/lib/virtplane-lab")
>>> servers = storage.up(("nfs", "gluster", "iscsi"))   # starts what does not run yet; idempotent
>>> storage.status()                                    # what runs, from files: any process can ask
>>> storage.down()                                      # stops every server, by pid

Each server lives under ``<lab dir>/storage/<kind>/`` (generated configs, pidfiles, logs, data), runs
detached from the process that started it, and is stopped by pid after checking the pid is still ours
(see ``procs``). Ports are fixed and chosen away from system services, except where a client gives no
choice (rpcbind 111 for libnfs, glusterd 24007 for bricks): so one lab's storage per machine.

- ``nfs``: ganesha + rpcbind, see ``nfs``       -> ``NfsServer``      (address, export path, ports)
- ``gluster``: glusterd + volume, see ``gluster`` -> ``GlusterServer`` (host, volume, bricks, mount path)
- ``iscsi``: tgtd + target + LUN + CHAP, see ``iscsi`` -> ``IscsiServer`` (portal, IQN, CHAP user,
  secret file)

Errors::

    StorageError    a server cannot start/stop, a port is taken, a package is missing; says where to look
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterable, Iterator
from pathlib import Path

from controller.dev.lab.storage.gluster import GlusterBackend
from controller.dev.lab.storage.iscsi import IscsiBackend
from controller.dev.lab.storage.manifests import storage_manifests
from controller.dev.lab.storage.model import (
    STORAGE_KINDS,
    GlusterServer,
    IscsiServer,
    NfsServer,
    StorageError,
    StorageKind,
    StorageServer,
    parse_storage_kinds,
)
from controller.dev.lab.storage.nfs import NfsBackend

Backend = NfsBackend | GlusterBackend | IscsiBackend

__all__ = [
    "STORAGE_KINDS",
    "GlusterServer",
    "IscsiServer",
    "LabStorage",
    "NfsServer",
    "StorageError",
    "StorageKind",
    "StorageServer",
    "parse_storage_kinds",
    "storage_manifests",
]


class LabStorage:
    """The storage servers of one lab directory (``<dir>/storage/<kind>``)."""

    def __init__(self, lab_dir: Path | str, *, start_timeout: float = 60.0, gluster_replica: int | None = None) -> None:
        self.dir = Path(lab_dir).absolute() / "storage"
        self.start_timeout = start_timeout
        self.gluster_replica = gluster_replica

    def backend(self, kind: StorageKind) -> Backend:
        directory = self.dir / kind
        if kind == "nfs":
            return NfsBackend(directory, self.start_timeout)
        if kind == "gluster":
            return GlusterBackend(directory, self.start_timeout, self.gluster_replica)
        return IscsiBackend(directory, self.start_timeout)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down across processes (two `lab up` at once would race for the same ports)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "storage.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def kinds(self) -> tuple[StorageKind, ...]:
        """Kinds this lab has ever started (their directories exist)."""
        return tuple(kind for kind in STORAGE_KINDS if (self.dir / kind).is_dir())

    def up(self, kinds: Iterable[StorageKind]) -> list[StorageServer]:
        """Start the servers of ``kinds`` that do not run yet; return their descriptions."""
        wanted = [kind for kind in STORAGE_KINDS if kind in set(kinds)]
        with self._locked():
            return [self.backend(kind).up() for kind in wanted]

    def status(self) -> list[StorageServer]:
        return [self.backend(kind).status() for kind in self.kinds()]

    def down(self, timeout: float = 20.0) -> None:
        """Stop every server of this lab; clients (lab hosts) should be stopped first."""
        if not self.kinds():
            return  # never started here: create nothing
        errors = []
        with self._locked():
            for kind in self.kinds():
                try:
                    self.backend(kind).down(timeout)
                except StorageError as err:
                    errors.append(f"{kind}: {err}")
        if errors:
            raise StorageError("; ".join(errors))
