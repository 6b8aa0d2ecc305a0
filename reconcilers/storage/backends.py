"""Storage backends: the one place that knows what each StorageDomain type needs. Pure.

For each ``spec.type`` a ``StorageBackend`` answers:

- ``pool(sd)``: the libvirt pool every host that sees the domain must have (None: the type needs none);
- ``image_dir(sd)``: where the images of the domain's Disks are, as hosts see that path (None: not files);
- ``disk_source(sd, path)``: how a VM's domain XML reaches one image (a file, or a network disk);
- ``unsupported(sd)``: why this version cannot serve the domain yet (None: it can).

Adding a type: a backend here, its ``*PoolConfig`` in ``reconcilers.domain`` (with the codec's render and
parse for it in ``controller.adapters.libvirt.codec.resources``), and its entry in ``BACKENDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconcilers.domain import DirPoolConfig, DiskSource, FileSource, PoolConfig, PoolName
from specs.storage import StorageDomain


def pool_name(domain: str) -> PoolName:
    """The libvirt pool of StorageDomain ``domain`` on every host: ``vp-<domain>``."""
    return PoolName(f"vp-{domain}")


@dataclass(frozen=True)
class DirectoryBackend:
    """Images are files in a directory every host sees at the same path: a libvirt ``dir`` pool."""

    type: str

    def _path(self, sd: StorageDomain) -> str | None:
        block = sd.spec.posix if self.type == "posix" else sd.spec.local
        return block.path if block is not None else None

    def unsupported(self, sd: StorageDomain) -> str | None:
        return None if self._path(sd) is not None else f"type {self.type} needs its {self.type}.path"

    def pool(self, sd: StorageDomain) -> PoolConfig | None:
        path = self._path(sd)
        return DirPoolConfig(pool_name(sd.metadata.name), path) if path is not None else None

    def image_dir(self, sd: StorageDomain) -> str | None:
        return self._path(sd)

    def disk_source(self, sd: StorageDomain, path: str) -> DiskSource:
        return FileSource(path)


@dataclass(frozen=True)
class UnservedBackend:
    """A type the spec accepts but this version does not serve: reported as Unsupported, never Ready."""

    type: str

    def unsupported(self, sd: StorageDomain) -> str | None:
        return f"type {self.type} is not served by this version yet (posix, local are)"

    def pool(self, sd: StorageDomain) -> PoolConfig | None:
        return None

    def image_dir(self, sd: StorageDomain) -> str | None:
        return None

    def disk_source(self, sd: StorageDomain, path: str) -> DiskSource:
        return FileSource(path)


StorageBackend = DirectoryBackend | UnservedBackend

BACKENDS: dict[str, StorageBackend] = {
    "posix": DirectoryBackend("posix"),
    "local": DirectoryBackend("local"),
    "nfs": UnservedBackend("nfs"),
    "gluster": UnservedBackend("gluster"),
}


def backend_for(sd: StorageDomain) -> StorageBackend:
    return BACKENDS[sd.spec.type]
