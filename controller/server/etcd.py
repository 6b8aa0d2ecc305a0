"""A supervised single-node etcd (the real ``/usr/bin/etcd`` binary) under a data directory.

Used by the all-in-one server when no ``--etcd`` endpoint is given, and by the tests::

    with EmbeddedEtcd(tmp_path) as etcd:
        store = await Store.connect([etcd.endpoint])

Layout under ``data_dir`` (mode 0700): ``etcd/`` (etcd's own data directory), ``etcd.log`` (stdout and
stderr of every run, appended), ``etcd.pid`` (the running etcd's pid) and ``run/`` (mode 0700: the
client and peer unix sockets, mode 0600; a short directory under /tmp instead when that path is too long
for a socket).

Locked down (issue 9): by default etcd listens on unix sockets only — no TCP port that any local user
could reach and write a Host spec into — with auto-compaction on (``auto_compaction_retention``, periodic).
``listen="tcp"`` (loopback ports, chosen once and kept across restarts) remains for tests that need a port.

It dies with its parent: the child asks the kernel for SIGTERM when the thread that started it exits
(``PR_SET_PDEATHSIG``; start it from a thread that lives as long as the server: the main thread). A stale
etcd left by a crashed server (its pidfile names a live process whose command line is this binary with
this data dir) is stopped before a new one starts; nothing is ever signalled by name.

Errors::

    EtcdServerError(RuntimeError)   etcd did not start (message carries the log tail) or the
                                    binary is missing
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Literal

from controller.store.apply import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS

ETCD_BINARY = "/usr/bin/etcd"
PR_SET_PDEATHSIG = 1
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes with the terminating NUL; keep a margin
CLIENT_SOCKET, PEER_SOCKET = "localhost:2379", "localhost:2380"  # etcd wants host:port even for unix://
DEFAULT_COMPACTION_RETENTION = "1h"


class EtcdServerError(RuntimeError):
    """etcd could not be started or stopped; the message includes the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedEtcd:
    """One etcd process; restartable on the same data directory and ports."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        *,
        max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        quota_backend_bytes: int = 8 * 1024**3,
        auto_compaction_retention: str | None = DEFAULT_COMPACTION_RETENTION,
        binary: str = ETCD_BINARY,
        start_timeout: float = 30.0,
        listen: Literal["unix", "tcp"] = "unix",
        name: str = "virtplane",
        initial_cluster: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.listen = listen
        tcp = listen == "tcp"
        self.client_port = client_port if client_port is not None else (free_port(host) if tcp else 0)
        self.peer_port = peer_port if peer_port is not None else (free_port(host) if tcp else 0)
        self.max_txn_ops = max_txn_ops
        self.max_request_bytes = max_request_bytes
        self.quota_backend_bytes = quota_backend_bytes
        self.auto_compaction_retention = auto_compaction_retention
        self.binary = binary
        self.start_timeout = start_timeout
        self.name = name
        self.initial_cluster = initial_cluster  # "name=peer-url,..." of every member; None: a cluster of one
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public face ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Client URL: ``unix:///<run dir>/localhost:2379``, or ``http://127.0.0.1:23790`` (tcp)."""
        if self.listen == "unix":
            return f"unix://{self.socket_dir / CLIENT_SOCKET}"
        return f"http://{self.host}:{self.client_port}"

    @property
    def socket_dir(self) -> Path:
        """Where the unix sockets live: ``<data_dir>/run``, or /tmp/vp-etcd-<hash> if that is too long."""
        run = self.data_dir / "run"
        if len(str(run / CLIENT_SOCKET)) <= SOCKET_PATH_MAX:
            return run
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"vp-etcd-{digest}"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "etcd.pid"

    @property
    def peer_url(self) -> str:
        """The peer URL this member advertises (a cluster of several members listens on TCP)."""
        if self.listen == "unix":
            return f"unix://{PEER_SOCKET}"
        return f"http://{self.host}:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "etcd.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn etcd and return once ``/health`` answers true; raise EtcdServerError otherwise."""
        if self.running:
            return
        self.spawn()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def spawn(self) -> None:
        """Start the process without waiting (a cluster member is healthy only once a quorum runs): call
        it from the thread that lives as long as the server, since the parent-death signal follows the
        thread that forked. Stops a stale etcd of this data dir first."""
        if self.running:
            return
        if not os.access(self.binary, os.X_OK):
            raise EtcdServerError(f"etcd binary {self.binary} not found or not executable "
                                  "(install Debian's etcd-server)")
        self._private_dir(self.data_dir)
        self.stop_stale()
        cwd = None
        if self.listen == "unix":
            cwd = self._private_dir(self.socket_dir)
            for name in (CLIENT_SOCKET, PEER_SOCKET):
                with contextlib.suppress(FileNotFoundError):
                    (cwd / name).unlink()  # left by a killed etcd; nothing listens on it now
        parent = os.getpid()
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting etcd on {self.endpoint} at {time.ctime()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,  # our Ctrl-C is not etcd's; we stop it ourselves
                preexec_fn=lambda: _die_with_parent(parent),
            )
        self.pid_path.write_text(f"{self._proc.pid}\n")

    def stop_stale(self, timeout: float = 10.0) -> int | None:
        """Stop an etcd left running on this data dir by a crashed server; returns its pid (None: none).
        Only a process whose command line is ``binary`` with ``--data-dir <ours>`` is signalled."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if pid == self.pid or not self._is_our_etcd(pid):
            self.pid_path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._is_our_etcd(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._is_our_etcd(pid):
                os.kill(pid, signal.SIGKILL)
                while self._is_our_etcd(pid):
                    time.sleep(0.05)
        with open(self.log_path, "ab") as log:
            log.write(f"--- stopped a stale etcd (pid {pid}) left on this data dir\n".encode())
        self.pid_path.unlink(missing_ok=True)
        return pid

    def _is_our_etcd(self, pid: int) -> bool:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        if state == "Z":
            return False  # a zombie holds nothing (its parent reaps it)
        data = str(self.data_dir / "etcd").encode()
        return bool(argv) and argv[0] == self.binary.encode() and any(
            a == data and i > 0 and argv[i - 1] == b"--data-dir" for i, a in enumerate(argv)
        )

    @staticmethod
    def _private_dir(path: Path) -> Path:
        """``path`` as a directory of ours, mode 0700 (created if needed); refuses anything else."""
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise EtcdServerError(f"{path} is not a directory owned by uid {os.geteuid()}; refusing to use it")
        if info.st_mode & 0o077:
            path.chmod(0o700)
        return path

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; by PID only."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self.pid_path.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL at once (simulates a crash)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedEtcd:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedEtcd({str(self.data_dir)!r}, endpoint={self.endpoint!r}, pid={self.pid})"

    # -- internals -----------------------------------------------------------------------------

    def _command(self) -> list[str]:
        if self.listen == "unix":  # relative to the socket dir (etcd's cwd): unix://host:port is a file name
            client, peer = f"unix://{CLIENT_SOCKET}", f"unix://{PEER_SOCKET}"
        else:
            client, peer = self.endpoint, f"http://{self.host}:{self.peer_port}"
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.initial_cluster or f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--max-txn-ops", str(self.max_txn_ops),
            "--max-request-bytes", str(self.max_request_bytes),
            "--quota-backend-bytes", str(self.quota_backend_bytes),
        ]
        if self.initial_cluster is not None:
            cmd += ["--initial-cluster-token", "virtplane"]
        if self.auto_compaction_retention is not None:
            cmd += ["--auto-compaction-mode", "periodic",
                    "--auto-compaction-retention", self.auto_compaction_retention]
        return cmd

    def _health(self) -> dict[str, object]:
        if self.listen == "unix":
            conn: http.client.HTTPConnection = _UnixHTTPConnection(str(self.socket_dir / CLIENT_SOCKET))
        else:
            conn = http.client.HTTPConnection(self.host, self.client_port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            body = json.loads(conn.getresponse().read() or b"{}")
        finally:
            conn.close()
        return body if isinstance(body, dict) else {}

    def wait_healthy(self) -> None:
        """Return once ``/health`` answers true; EtcdServerError (with the log tail) otherwise."""
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise EtcdServerError(
                    f"etcd exited with status {code} during start on {self.endpoint}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                body = self._health()
                if body.get("health") in ("true", True):
                    if self.listen == "unix":
                        for name in (CLIENT_SOCKET, PEER_SOCKET):
                            (self.socket_dir / name).chmod(0o600)
                    return
                last_error = f"/health said {body}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                raise EtcdServerError(
                    f"etcd on {self.endpoint} not healthy after {self.start_timeout:.0f}s "
                    f"({last_error}); log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            return b"".join(deque(log, maxlen=lines)).decode(errors="replace")
        return "(no log)"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=1.0)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGTERM when the parent('s forking thread) dies; exit if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class EtcdCluster:
    """``size`` etcd members on loopback, each with its own data directory and ports, for tests and
    benches of a replicated store (a real deployment runs its own cluster and passes every endpoint to
    ``virtplane server --etcd``). Members are stopped and killed by PID."""

    def __init__(self, data_dir: str | os.PathLike[str], size: int = 3, **options: object) -> None:
        base = Path(data_dir)
        options.setdefault("listen", "tcp")  # members reach each other by peer URL: loopback TCP here
        self.members = [EmbeddedEtcd(base / f"member-{i}", name=f"m{i}", **options)  # type: ignore[arg-type]
                        for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def max_txn_ops(self) -> int:
        return self.members[0].max_txn_ops

    @property
    def max_request_bytes(self) -> int:
        return self.members[0].max_request_bytes

    def start(self) -> None:
        try:
            for m in self.members:
                m.spawn()
            for m in self.members:
                m.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
