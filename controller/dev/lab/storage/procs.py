"""Processes of the lab's storage servers: start detached, wait with deadlines, stop by pid.

Every server is started in the background through ``/bin/sh`` (``"$@" & echo $! > pidfile``), in its own
session, so its pid is known exactly from the start and it outlives the command that started it. Before a
pid is signalled, ``Owner`` checks that it is still the process we started: alive, the expected program,
and a proof of ours in its command line (our config or pidfile path) or in its mount namespace (one of our
directories mounted where the server looks). A reused pid is never signalled.

The same helpers exist privately in ``controller/dev/lab/hosts.py``; this module does not touch that file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from controller.dev.lab.storage.model import StorageError

T = TypeVar("T")
POLL = 0.05


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (pid 1 here reaps orphans late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def sees(pid: int, inside: str, outside: Path) -> bool:
    """True if, in ``pid``'s mount namespace, path ``inside`` is our directory ``outside`` (same inode)."""
    try:
        theirs = os.stat(f"/proc/{pid}/root{inside}")
        ours = os.stat(outside)
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


@dataclass(frozen=True)
class Owner:
    """What a pid of ours looks like: program name, and marks that only our instance has."""

    program: str
    marks: tuple[str, ...] = ()  # strings that must all appear in the command line
    views: tuple[tuple[str, Path], ...] = field(default=())  # (path inside, our dir) it must see

    def owns(self, pid: int | None) -> bool:
        if pid is None or not alive(pid):
            return False
        args = cmdline(pid)
        if not args or Path(args[0]).name != self.program:
            return False
        joined = " ".join(args)
        if not all(mark in joined for mark in self.marks):
            return False
        return all(sees(pid, inside, outside) for inside, outside in self.views)


def spawn(argv: Sequence[str], log: Path, pidfile: Path) -> int:
    """Start ``argv`` in the background (own session, stdio to ``log``); return its pid.

    ``argv`` may begin with ``unshare``/``nsenter``: both exec the program without forking, so the pid
    written is the server's own.
    """
    script = 'log=$1; pidfile=$2; shift 2; "$@" </dev/null >>"$log" 2>&1 & echo $! >"$pidfile"'
    pidfile.unlink(missing_ok=True)
    subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log), str(pidfile), *argv],
        check=True,
        timeout=10,
        start_new_session=True,
    )
    pid = read_pid(pidfile)
    if pid is None:
        raise StorageError(f"could not start {argv[0]}: no pid written to {pidfile}")
    return pid


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, *, pid: int | None = None,
               log: Path | None = None) -> T:
    """Poll ``probe`` until truthy; fail at the deadline, or at once if ``pid`` dies meanwhile."""
    deadline = time.monotonic() + timeout
    where = f"; see {log}" if log else ""
    while True:
        result = probe()
        if result:
            return result
        if pid is not None and not alive(pid):
            raise StorageError(f"{what}: process {pid} exited while starting{where}")
        if time.monotonic() >= deadline:
            raise StorageError(f"{what}: not ready after {timeout:.0f} s{where}")
        time.sleep(POLL)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid is gone; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    remaining = list(pids)
    while True:
        for pid in remaining:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        remaining = [pid for pid in remaining if alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(POLL)


def stop(pids: Iterable[int], owner: Owner, timeout: float, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal each pid that ``owner`` owns, then SIGKILL those still ours after ``timeout``."""
    ours = [pid for pid in pids if owner.owns(pid)]
    for pid in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    left = wait_gone(ours, timeout)
    kill(left, owner)


def kill(pids: Iterable[int], owner: Owner | None = None, timeout: float = 10.0) -> None:
    """SIGKILL each pid (that ``owner`` owns, if given); fail if one survives."""
    targets = [pid for pid in pids if alive(pid) and (owner is None or owner.owns(pid))]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = wait_gone(targets, timeout)
    if left:
        raise StorageError(f"processes {left} survived SIGKILL")


def namespace_members(ns: str | None, known: Iterable[int]) -> list[int]:
    """Every live process in mount namespace ``ns``, trusted only while a known pid of ours is in it
    (namespace ids are reused once a namespace dies) and never our own namespace."""
    if ns is None or ns == mount_ns(os.getpid()) or all(mount_ns(p) != ns for p in known):
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_ns(int(entry.name)) == ns and alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def tcp_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def run(argv: Sequence[str], *, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a server's admin tool; on failure the error names the command and what it printed."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise StorageError(f"{argv[0]} did not answer in {timeout:.0f} s: {' '.join(argv[:4])} ...") from err
    if check and done.returncode != 0:
        out = (done.stderr.strip() or done.stdout.strip())[-800:]
        raise StorageError(f"{' '.join(argv[:6])} ... failed (exit {done.returncode}): {out}")
    return done
