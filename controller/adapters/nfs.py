"""Images on an NFS export reached from the server itself, with no kernel NFS client: libnfs (the library
QEMU's ``nfs`` block driver uses, loaded with ctypes) for stat, free space and delete, and ``qemu-img`` with
``nfs://`` URLs for create, copy, resize and info.

This is how StorageDomains of type nfs with ``access: qemu`` are served: hosts reach the images with QEMU's
libnfs (``<disk type='network'><source protocol='nfs'>``), so no host mounts anything; the server creates
and grows them. Every call is blocking and runs in a worker thread (``anyio.to_thread``).

Errors (the reconcile error tree)::

    TransientError   the server does not answer, or refuses the export (wrong export, access denied)
    TerminalError    qemu-img refused an operation on an existing export (says why)
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import anyio

from controller.common.errors import TerminalError, TransientError
from reconcilers.domain import NfsExport, ObservedVolume, VolumeConfig, VolumeName

T = TypeVar("T")
TIMEOUT_MS = 10_000
LIBNFS = "libnfs.so.13"


class _StatVfs64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail", "f_fsid",
        "f_flag", "f_namemax")]


class _Stat64(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "nfs_dev", "nfs_ino", "nfs_mode", "nfs_nlink", "nfs_uid", "nfs_gid", "nfs_rdev", "nfs_size",
        "nfs_blksize", "nfs_blocks", "nfs_atime", "nfs_mtime", "nfs_ctime", "nfs_atime_nsec",
        "nfs_mtime_nsec", "nfs_ctime_nsec", "nfs_used")]


@cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(LIBNFS)
    except OSError as exc:
        raise TerminalError(f"{LIBNFS} is missing (Debian: libnfs13, pulled in by qemu-block-extra): {exc}",
                            op="libnfs") from None
    lib.nfs_init_context.restype = ctypes.c_void_p
    lib.nfs_get_error.restype = ctypes.c_char_p
    for fn in ("nfs_destroy_context", "nfs_get_error", "nfs_set_timeout", "nfs_set_version"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p] + ([ctypes.c_int] if fn.startswith("nfs_set") else [])
    lib.nfs_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    lib.nfs_unlink.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nfs_statvfs64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(_StatVfs64)]
    lib.nfs_stat64.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(_Stat64)]
    return lib


@dataclass(frozen=True)
class Space:
    capacity_bytes: int
    available_bytes: int


class _Session:
    """One libnfs context mounted on the export (sync API; not shared between threads)."""

    def __init__(self, export: NfsExport) -> None:
        self.export = export
        self.lib = _lib()
        self.ctx = self.lib.nfs_init_context()
        if not self.ctx:
            raise TransientError("libnfs: cannot create a context", op="libnfs")
        self.lib.nfs_set_timeout(self.ctx, TIMEOUT_MS)
        self.lib.nfs_set_version(self.ctx, 3)
        if self.lib.nfs_mount(self.ctx, export.server.encode(), export.export.encode()) != 0:
            message = self._error()
            self.close()
            raise TransientError(f"NFS server {export.server} export {export.export}: {message}", op="nfs mount")

    def _error(self) -> str:
        raw = self.lib.nfs_get_error(self.ctx)
        return raw.decode(errors="replace") if raw else "unknown libnfs error"

    def close(self) -> None:
        if self.ctx:
            self.lib.nfs_destroy_context(self.ctx)
            self.ctx = None

    def space(self) -> Space:
        st = _StatVfs64()
        if self.lib.nfs_statvfs64(self.ctx, b"/", ctypes.byref(st)) != 0:
            raise TransientError(f"statvfs on {self.export.url('')}: {self._error()}", op="nfs statvfs")
        return Space(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)

    def exists(self, name: str) -> bool:
        st = _Stat64()
        rc = self.lib.nfs_stat64(self.ctx, f"/{name}".encode(), ctypes.byref(st))
        if rc == -errno.ENOENT:
            return False
        if rc != 0:
            raise TransientError(f"stat {self.export.url(name)}: {self._error()}", op="nfs stat")
        return True

    def unlink(self, name: str) -> bool:
        rc = self.lib.nfs_unlink(self.ctx, f"/{name}".encode())
        if rc == -errno.ENOENT:
            return False
        if rc != 0:
            raise TransientError(f"unlink {self.export.url(name)}: {self._error()}", op="nfs unlink")
        return True


def _with_session(export: NfsExport, fn: Callable[[_Session], T]) -> T:
    session = _Session(export)
    try:
        return fn(session)
    finally:
        session.close()


async def probe(export: NfsExport) -> Space:
    """Mount the export with libnfs and read its size and free space; TransientError says why not."""
    return await anyio.to_thread.run_sync(_with_session, export, lambda s: s.space())


async def delete_image(export: NfsExport, name: str) -> bool:
    """Remove an image; False when it was already gone."""
    return await anyio.to_thread.run_sync(_with_session, export, lambda s: s.unlink(name))


async def observe_image(export: NfsExport, name: VolumeName) -> ObservedVolume | None:
    """The image as qemu-img sees it, or None when there is no such file on the export."""
    if not await anyio.to_thread.run_sync(_with_session, export, lambda s: s.exists(name)):
        return None
    url = export.url(name)
    info = json.loads(await _qemu_img("info", "--output=json", "-U", url))
    return ObservedVolume(
        name=name, path=url, capacity_bytes=int(info["virtual-size"]),
        allocation_bytes=int(info.get("actual-size") or 0), format=str(info["format"]),
        backing_path=info.get("full-backing-filename") or info.get("backing-filename"),
        backing_format=info.get("backing-filename-format"),
    )


async def create_image(export: NfsExport, volume: VolumeConfig, source: str | None = None,
                       source_format: str | None = None) -> None:
    """Create the image (empty, qcow2 overlay on ``volume.backing_path``, or a full copy of ``source``)
    unless it exists. A copy is written to ``<name>.part`` first, so a half copy is never taken for done."""
    if await anyio.to_thread.run_sync(_with_session, export, lambda s: s.exists(volume.name)):
        return
    url = export.url(volume.name)
    if source is not None:
        part = f"{volume.name}.part"
        fmt = ["-f", source_format] if source_format else []
        await _qemu_img("convert", "-U", *fmt, "-O", volume.format, source, export.url(part))
        if volume.capacity_bytes:
            await _grow(export.url(part), volume.format, volume.capacity_bytes)
        await anyio.to_thread.run_sync(_with_session, export, lambda s: _rename(s, part, volume.name))
        return
    backing = ["-b", volume.backing_path, "-F", volume.backing_format or "qcow2"] if volume.backing_path else []
    await _qemu_img("create", "-q", "-f", volume.format, *backing, url, str(volume.capacity_bytes))


async def resize_image(export: NfsExport, name: str, fmt: str, capacity_bytes: int) -> None:
    """Grow an image that no running guest holds (a running one grows with ``blockresize``)."""
    await _grow(export.url(name), fmt, capacity_bytes)


async def _grow(url: str, fmt: str, capacity_bytes: int) -> None:
    info = json.loads(await _qemu_img("info", "--output=json", "-U", url))
    if int(info["virtual-size"]) < capacity_bytes:
        await _qemu_img("resize", "-q", "-f", fmt, url, str(capacity_bytes))


def _rename(session: _Session, old: str, new: str) -> None:
    lib = session.lib
    lib.nfs_rename.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    if lib.nfs_rename(session.ctx, f"/{old}".encode(), f"/{new}".encode()) != 0:
        raise TransientError(f"rename {old} to {new} on {session.export.url('')}: {session._error()}",
                             op="nfs rename")


async def _qemu_img(*args: str) -> str:
    result = await anyio.run_process(["qemu-img", *args], check=False,
                                     env={**os.environ, "LC_ALL": "C"})
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()
        raise TerminalError(f"qemu-img {args[0]} failed: {err}", op=f"qemu-img {args[0]}")
    return result.stdout.decode()
