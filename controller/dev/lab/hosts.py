"""Lab hosts: N libvirtd "hosts" on one Linux machine.

Each host is a plain ``libvirtd`` started inside its own mount namespace (``unshare --mount``) where
private bind mounts put per-host directories over the paths libvirt hard-codes::

    <lab dir>/hosts/lab-N/run    -> /var/run/libvirt     (sockets, pidfiles, QEMU status XML)
    <lab dir>/hosts/lab-N/lib    -> /var/lib/libvirt
    <lab dir>/hosts/lab-N/etc    -> /etc/libvirt         (libvirtd.conf, qemu.conf, domain XML)
    <lab dir>/hosts/lab-N/log    -> /var/log/libvirt
    <lab dir>/hosts/lab-N/cache  -> /var/cache/libvirt
    <lab dir>/shared             the POSIX storage domain, same path on every host
    <lab dir>/lockspace          virtlockd leases of disks (only with ``lock_manager=True``)

The mounts live only in the host's namespace, so they vanish with its last process: stopping a host is
killing its processes. Everything needed to find those processes is on disk (libvirtd's pidfile, QEMU's
pidfiles under the run directory, the namespace id in ``state.json``), so any process — for example
``virtplane lab down`` — can stop a lab another process started.

Errors::

    LabError            something about the lab itself is wrong (unknown host, libvirtd did not start)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from controller.dev.lab.paths import DEFAULT_LAB_DIR

HOST_PREFIX = "lab-"
MIGRATION_PORT_BASE = 49152
MIGRATION_PORTS_PER_HOST = 64

# (subdirectory of the host dir, path it is mounted over inside the host's namespace)
HOST_MOUNTS: tuple[tuple[str, str], ...] = (
    ("run", "/var/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("etc", "/etc/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
)


class LabError(Exception):
    """The lab cannot do what was asked; the message says what and where to look."""


@dataclass(frozen=True)
class LabHost:
    """One lab host as seen from outside."""

    name: str
    uri: str
    pid: int | None
    running: bool
    qemu_pids: tuple[int, ...]
    host_uuid: str
    dir: Path
    virtlockd_pid: int | None = None


def host_name(index: int) -> str:
    return f"{HOST_PREFIX}{index}"


def host_index(name: str) -> int:
    if not name.startswith(HOST_PREFIX) or not name[len(HOST_PREFIX) :].isdigit():
        raise LabError(f"{name!r} is not a lab host name; expected {HOST_PREFIX}1, {HOST_PREFIX}2, ...")
    index = int(name[len(HOST_PREFIX) :])
    if index < 1:
        raise LabError(f"{name!r}: lab hosts are numbered from 1")
    return index


def migration_ports(index: int) -> tuple[int, int]:
    """Distinct migration port range of host ``lab-<index>``."""
    low = MIGRATION_PORT_BASE + (index - 1) * MIGRATION_PORTS_PER_HOST
    return low, low + MIGRATION_PORTS_PER_HOST - 1


def render_libvirtd_conf(host_dir: Path, host_uuid: str) -> str:
    return "\n".join(
        (
            "# written by virtplane lab; rewritten on every start",
            f'unix_sock_dir = "{host_dir / "run"}"',
            'unix_sock_group = "root"',
            'unix_sock_rw_perms = "0700"',
            'auth_unix_ro = "none"',
            'auth_unix_rw = "none"',
            f'host_uuid = "{host_uuid}"',
            "log_level = 3",
            f'log_outputs = "3:file:{host_dir / "log" / "libvirtd.log"}"',
            "",
        )
    )


def render_qemu_conf(index: int, *, lock_manager: bool = False) -> str:
    low, high = migration_ports(index)
    return "\n".join(
        (
            "# written by virtplane lab; rewritten on every start",
            'user = "root"',
            'group = "root"',
            "dynamic_ownership = 0",
            "remember_owner = 0",
            'security_driver = "none"',
            'stdio_handler = "file"',
            f"migration_port_min = {low}",
            f"migration_port_max = {high}",
            # Several libvirtds on one machine would fight over the same cgroup names, and QEMU's own
            # mount namespace buys nothing inside ours.
            "cgroup_controllers = [ ]",
            "namespaces = [ ]",
            'vnc_listen = "127.0.0.1"',
            # libvirt's lock manager: virtlockd holds a lease per disk (see render_qemu_lockd_conf).
            *(('lock_manager = "lockd"',) if lock_manager else ()),
            "",
        )
    )


def render_qemu_lockd_conf(lockspace_dir: Path) -> str:
    """qemu-lockd.conf: a lease for every disk, kept as a lock on a file in ``lockspace_dir``.

    Leases are files named by the SHA-256 of the disk path; virtlockd holds an fcntl lock on the file
    while a QEMU uses the disk. The directory must be the same, shared one on every host (here: one
    machine, one kernel). ``require_lease_for_disks``: a disk without a lease is refused.
    """
    return "\n".join(
        (
            "# written by virtplane lab; rewritten on every start",
            "auto_disk_leases = 1",
            "require_lease_for_disks = 1",
            f'file_lockspace_dir = "{lockspace_dir}"',
            "",
        )
    )


def render_virtlockd_conf(host_dir: Path) -> str:
    return "\n".join(
        (
            "# written by virtplane lab; rewritten on every start",
            "log_level = 3",
            f'log_outputs = "3:file:{host_dir / "log" / "virtlockd.log"}"',
            "",
        )
    )


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it happens to be our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid is gone; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    remaining = list(pids)
    while True:
        for pid in remaining:
            _reap(pid)
        remaining = [pid for pid in remaining if _alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.05)


class _Host:
    """Paths and process discovery for one host directory."""

    def __init__(self, lab_dir: Path, name: str) -> None:
        self.name = name
        self.index = host_index(name)
        self.dir = lab_dir / "hosts" / name
        self.run = self.dir / "run"
        self.socket = self.run / "libvirt-sock"
        self.pidfile = self.run / "libvirtd.pid"
        self.virtlockd_pidfile = self.run / "virtlockd.pid"
        self.virtlockd_config = self.dir / "etc" / "virtlockd.conf"
        self.config = self.dir / "etc" / "libvirtd.conf"
        self.state_file = self.dir / "state.json"
        self.uuid_file = self.dir / "host-uuid"

    @property
    def uri(self) -> str:
        return "qemu+unix:///system?socket=" + urllib.parse.quote(str(self.socket), safe="/")

    def host_uuid(self) -> str:
        try:
            return self.uuid_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def libvirtd_pid(self) -> int | None:
        """The pid of this host's libvirtd if it runs (checked against its command line)."""
        pid = _read_pid(self.pidfile)
        if pid is None or not _alive(pid):
            return None
        args = _cmdline(pid)
        if not args or not args[0].endswith("libvirtd") or str(self.config) not in args:
            return None
        return pid

    def virtlockd_pid(self) -> int | None:
        """The pid of this host's virtlockd if it runs (only with the lock manager)."""
        pid = _read_pid(self.virtlockd_pidfile)
        if pid is None or not _alive(pid):
            return None
        args = _cmdline(pid)
        if not args or not args[0].endswith("virtlockd") or str(self.virtlockd_config) not in args:
            return None
        return pid

    def qemu_pids(self) -> tuple[int, ...]:
        """Pids of live QEMU processes whose pidfile is under this host's run directory."""
        pids = []
        for pidfile in sorted((self.run / "qemu").glob("*.pid")):
            pid = _read_pid(pidfile)
            if pid is None or not _alive(pid):
                continue
            args = _cmdline(pid)
            if args and "qemu-system" in Path(args[0]).name:
                pids.append(pid)
        return tuple(pids)

    def namespace_pids(self) -> tuple[int, ...]:
        """Every process inside this host's mount namespace (libvirtd, QEMU, helpers)."""
        known = [p for p in (self.libvirtd_pid(), self.virtlockd_pid(), *self.qemu_pids()) if p is not None]
        namespaces = {ns for ns in (_mount_ns(p) for p in known) if ns is not None}
        try:
            recorded = json.loads(self.state_file.read_text()).get("mount_ns")
        except (FileNotFoundError, json.JSONDecodeError):
            recorded = None
        # The recorded namespace id is trusted only while a process we know is still in it: namespace
        # inode numbers are reused once a namespace dies.
        if recorded is None or recorded not in namespaces:
            return tuple(known)
        if recorded == _mount_ns(os.getpid()):
            return tuple(known)
        found = set(known)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _mount_ns(int(entry.name)) == recorded:
                found.add(int(entry.name))
        return tuple(sorted(p for p in found if _alive(p)))

    def status(self) -> LabHost:
        pid = self.libvirtd_pid()
        return LabHost(
            name=self.name,
            uri=self.uri,
            pid=pid,
            running=pid is not None and self.socket.exists(),
            qemu_pids=self.qemu_pids(),
            host_uuid=self.host_uuid(),
            dir=self.dir,
            virtlockd_pid=self.virtlockd_pid(),
        )


class Lab:
    """A set of lab hosts under one state directory.

    >>> lab = Lab("/var/lib/virtplane-lab")
    >>> hosts = lab.up(2)          # starts lab-1 and lab-2 unless they already run
    >>> lab.power_off("lab-1")     # SIGKILL its libvirtd and QEMUs, like pulling the plug
    >>> lab.power_on("lab-1")
    >>> lab.down()                 # nothing of the lab runs afterwards
    """

    def __init__(
        self,
        directory: Path | str = DEFAULT_LAB_DIR,
        *,
        start_timeout: float = 30.0,
        qemu_caps_dir: Path | str | None = None,
        lock_manager: bool | None = None,
    ) -> None:
        """``qemu_caps_dir``: QEMU capabilities cache shared by all hosts (default ``<dir>/qemu-caps``).

        ``lock_manager``: run a virtlockd in each host (started before its libvirtd) and configure
        QEMU's ``lockd`` lock manager with leases in ``<dir>/lockspace``. ``None`` keeps what the lab
        was last started with (recorded in ``<dir>/options.json``), so ``lab power-on`` from another
        process starts a host the way it was.

        Each libvirtd probes QEMU (~8 s here) on its first connection unless the cache holds a valid
        answer; sharing it across hosts, and across labs when given explicitly, probes once. libvirt
        validates the cache (QEMU and libvirt binaries, kernel, CPU) and writes it atomically.
        """
        self.dir = Path(directory).absolute()
        self.start_timeout = start_timeout
        self.qemu_caps_dir = Path(qemu_caps_dir).absolute() if qemu_caps_dir else self.dir / "qemu-caps"
        self._lock_manager = lock_manager

    @property
    def lock_manager(self) -> bool:
        """Whether hosts start with virtlockd and ``lock_manager = "lockd"``."""
        if self._lock_manager is not None:
            return self._lock_manager
        try:
            return bool(json.loads((self.dir / "options.json").read_text()).get("lock_manager", False))
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    @property
    def lockspace_dir(self) -> Path:
        """Where virtlockd keeps disk leases: one directory seen by every host."""
        return self.dir / "lockspace"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise up/down/power operations on this lab across processes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "lab.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def shared_dir(self) -> Path:
        """The POSIX storage domain: one directory, the same path on every host."""
        return self.dir / "shared"

    def host_names(self) -> list[str]:
        hosts_dir = self.dir / "hosts"
        if not hosts_dir.is_dir():
            return []
        names = [p.name for p in hosts_dir.iterdir() if p.is_dir() and p.name.startswith(HOST_PREFIX)]
        return sorted(names, key=host_index)

    def host(self, name: str) -> LabHost:
        if name not in self.host_names():
            raise LabError(f"no lab host {name!r} under {self.dir}; known: {', '.join(self.host_names())}")
        return _Host(self.dir, name).status()

    def status(self) -> list[LabHost]:
        return [_Host(self.dir, name).status() for name in self.host_names()]

    def up(self, n: int) -> list[LabHost]:
        """Make hosts lab-1..lab-n run; hosts already running are left alone. Returns their status."""
        if n < 1:
            raise LabError(f"a lab needs at least one host, got {n}")
        with self._locked():
            self.shared_dir.mkdir(parents=True, exist_ok=True)
            for index in range(1, n + 1):
                host = _Host(self.dir, host_name(index))
                if host.libvirtd_pid() is None:
                    self._start(host)
        return [_Host(self.dir, host_name(index)).status() for index in range(1, n + 1)]

    def down(self, timeout: float = 20.0) -> None:
        """Stop every host: QEMU first, then libvirtd, then anything else left in its namespace."""
        with self._locked():
            for name in self.host_names():
                self._stop(_Host(self.dir, name), graceful=True, timeout=timeout)

    def power_off(self, name: str) -> None:
        """SIGKILL the host's libvirtd and all its QEMU processes at once, like pulling the plug."""
        host = _Host(self.dir, self.host(name).name)
        with self._locked():
            self._stop(host, graceful=False, timeout=10.0)

    def power_on(self, name: str) -> LabHost:
        host = _Host(self.dir, self.host(name).name)
        with self._locked():
            if host.libvirtd_pid() is None:
                self._start(host)
        return host.status()

    # -- internals ---------------------------------------------------------------------------------

    def _prepare(self, host: _Host) -> None:
        for sub, _ in HOST_MOUNTS:
            (host.dir / sub).mkdir(parents=True, exist_ok=True)
        self.qemu_caps_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("lib/qemu", "cache/qemu/capabilities", "log/qemu", "run/qemu"):
            (host.dir / sub).mkdir(parents=True, exist_ok=True)
        if not host.host_uuid():
            host.uuid_file.write_text(str(uuid.uuid4()) + "\n")
        if not host.qemu_pids():
            # A host that boots has an empty /run (it is a tmpfs on real hosts); stale status XML of
            # QEMUs that died with a power-off would otherwise be "reconnected" to.
            for entry in host.run.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            (host.run / "qemu").mkdir()
        host.config.write_text(render_libvirtd_conf(host.dir, host.host_uuid()))
        lock_manager = self.lock_manager
        (self.dir / "options.json").write_text(json.dumps({"lock_manager": lock_manager}) + "\n")
        (host.dir / "etc" / "qemu.conf").write_text(render_qemu_conf(host.index, lock_manager=lock_manager))
        if lock_manager:
            self.lockspace_dir.mkdir(parents=True, exist_ok=True)
            (host.dir / "etc" / "qemu-lockd.conf").write_text(render_qemu_lockd_conf(self.lockspace_dir))
            host.virtlockd_config.write_text(render_virtlockd_conf(host.dir))
        (host.dir / "etc" / "libvirt.conf").write_text("# virtplane lab: client defaults unchanged\n")

    def _start(self, host: _Host) -> None:
        self._prepare(host)
        script_lines = ["set -e"]
        for sub, target in HOST_MOUNTS:
            script_lines.append(f'mkdir -p "{target}"')
            script_lines.append(f'mount --bind "{host.dir / sub}" "{target}"')
        script_lines.append(f'mount --bind "{self.qemu_caps_dir}" /var/cache/libvirt/qemu/capabilities')
        for source, target in self._account_overlays():
            script_lines.append(f'mount --bind "{source}" "{target}"')
        if self.lock_manager:
            # Before libvirtd: the lockd plugin connects to /run/libvirt/virtlockd-sock (this host's run
            # dir) when the QEMU driver starts. --daemon returns once the socket listens.
            script_lines.append(
                f'virtlockd --daemon --config "{host.virtlockd_config}" --pid-file "{host.virtlockd_pidfile}"'
            )
        script_lines.append(f'exec libvirtd --daemon --config "{host.config}" --pid-file "{host.pidfile}"')
        out = host.dir / "log" / "start.log"
        with out.open("ab") as log:
            # --daemon: libvirtd's parent exits only once the daemon is initialised (or failed), so
            # the return code tells whether the host came up, and the daemon is not our child.
            proc = subprocess.run(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    "-c",
                    "\n".join(script_lines),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                timeout=self.start_timeout,
                check=False,
                start_new_session=True,
            )
        if proc.returncode != 0:
            raise LabError(
                f"libvirtd of {host.name} did not start (exit {proc.returncode}); "
                f"see {out} and {host.dir / 'log' / 'libvirtd.log'}"
            )
        self._wait_ready(host)
        pid = host.libvirtd_pid()
        state = {"name": host.name, "libvirtd_pid": pid, "mount_ns": _mount_ns(pid) if pid else None}
        host.state_file.write_text(json.dumps(state, indent=2) + "\n")

    def _account_overlays(self) -> list[tuple[Path, str]]:
        """Copies of /etc/passwd and /etc/group that know the ``libvirt-qemu`` user and group.

        libvirt's QEMU driver resolves its compiled-in default user before it reads qemu.conf, so
        the user must exist even with ``user = "root"``. Debian's libvirt-daemon without
        libvirt-daemon-system does not create it; rather than change the machine's account
        database, each host's namespace gets these copies bind-mounted over the real files.
        """
        overlays: list[tuple[Path, str]] = []
        accounts = self.dir / "accounts"
        for real, line in (
            ("/etc/group", "libvirt-qemu:x:64055:\n"),
            ("/etc/passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"),
        ):
            text = Path(real).read_text()
            if any(entry.split(":", 1)[0] == "libvirt-qemu" for entry in text.splitlines()):
                continue
            accounts.mkdir(parents=True, exist_ok=True)
            copy = accounts / Path(real).name
            content = (text if text.endswith("\n") or not text else text + "\n") + line
            # Running hosts have this file bind-mounted: never rewrite it in place (a libvirtd reading it
            # while it is truncated fails with "Failed to parse group 'libvirt-qemu'"). Same content: keep
            # it; otherwise replace it atomically (mounted copies keep the old inode).
            if not copy.exists() or copy.read_text() != content:
                tmp = copy.with_name(copy.name + ".tmp")
                tmp.write_text(content)
                tmp.replace(copy)
            overlays.append((copy, real))
        return overlays

    def _wait_ready(self, host: _Host) -> None:
        deadline = time.monotonic() + self.start_timeout
        seen = False
        while time.monotonic() < deadline:
            pid = host.libvirtd_pid()
            if pid is not None and host.socket.exists():
                return
            if pid is None and seen:
                raise LabError(
                    f"libvirtd of {host.name} exited while starting; see {host.dir / 'log' / 'libvirtd.log'}"
                )
            seen = seen or pid is not None
            time.sleep(0.05)
        raise LabError(
            f"libvirtd of {host.name} is not answering on {host.socket} after {self.start_timeout:.0f} s; "
            f"see {host.dir / 'log' / 'libvirtd.log'}"
        )

    def _stop(self, host: _Host, *, graceful: bool, timeout: float) -> None:
        libvirtd = host.libvirtd_pid()
        everything = host.namespace_pids()
        qemus = host.qemu_pids()
        if graceful:
            for pid in qemus:
                _kill(pid, signal.SIGTERM)
            left = _wait_gone(qemus, timeout / 2)
            for pid in left:
                _kill(pid, signal.SIGKILL)
            if libvirtd is not None:
                _kill(libvirtd, signal.SIGTERM)
                if _wait_gone([libvirtd], timeout / 2):
                    _kill(libvirtd, signal.SIGKILL)
        # Power-off, or leftovers after a graceful stop: kill everything in the namespace at once.
        for pid in _ordered(libvirtd, everything):
            _kill(pid, signal.SIGKILL)
        left = _wait_gone(everything, timeout)
        if left:
            raise LabError(f"{host.name}: processes {left} survived SIGKILL")


def _ordered(first: int | None, pids: Iterable[int]) -> Iterator[int]:
    if first is not None:
        yield first
    yield from (p for p in pids if p != first)
