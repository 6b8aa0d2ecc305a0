"""A supervised single-node etcd (the real ``/usr/bin/etcd`` binary) under a data directory.

Used by the all-in-one server when no ``--etcd`` endpoint is given, and by the tests::

    with EmbeddedEtcd(tmp_path) as etcd:
        store = await Store.connect([etcd.endpoint])

Layout under ``data_dir``: ``etcd/`` (etcd's own data directory) and ``etcd.log`` (stdout and
stderr of every run, appended). The client and peer ports are chosen once (free ports unless
given) and kept across ``stop()`` / ``start()``, so a restart keeps the same endpoint.

Errors::

    EtcdServerError(RuntimeError)   etcd did not start (message carries the log tail) or the
                                    binary is missing
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType

from controller.store.apply import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS

ETCD_BINARY = "/usr/bin/etcd"


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
        auto_compaction_retention: str | None = None,
        binary: str = ETCD_BINARY,
        start_timeout: float = 30.0,
        name: str = "virtplane",
        initial_cluster: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.client_port = client_port if client_port is not None else free_port(host)
        self.peer_port = peer_port if peer_port is not None else free_port(host)
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
        """Client URL, e.g. ``http://127.0.0.1:23790``."""
        return f"http://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
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
        self.wait_healthy()

    def spawn(self) -> None:
        """Start the process without waiting (a cluster member is healthy only once a quorum runs)."""
        if self.running:
            return
        if not os.access(self.binary, os.X_OK):
            raise EtcdServerError(f"etcd binary {self.binary} not found or not executable "
                                  "(install Debian's etcd-server)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- starting etcd on {self.endpoint} at {time.ctime()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C is not etcd's; we stop it ourselves
            )

    def wait_healthy(self) -> None:
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; by PID only."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

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
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
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
            cmd += ["--auto-compaction-mode", "revision",
                    "--auto-compaction-retention", self.auto_compaction_retention]
        return cmd

    def _wait_healthy(self) -> None:
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
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1.0) as resp:
                    body = json.loads(resp.read() or b"{}")
                if body.get("health") in ("true", True):
                    return
                last_error = f"/health said {body}"
            except (OSError, urllib.error.URLError, ValueError) as exc:
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


class EtcdCluster:
    """``size`` etcd members on loopback, each with its own data directory and ports, for tests and
    benches of a replicated store (a real deployment runs its own cluster and passes every endpoint to
    ``virtplane server --etcd``). Members are stopped and killed by PID."""

    def __init__(self, data_dir: str | os.PathLike[str], size: int = 3, **options: object) -> None:
        base = Path(data_dir)
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
