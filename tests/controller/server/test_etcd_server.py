"""EmbeddedEtcd: starts healthy, keeps data and endpoint across restarts, fails loudly; locked down
(issue 9): unix sockets only (mode 0600 in a 0700 directory), auto-compaction, dies with its parent,
a stale one of the same data dir is stopped on start (by pidfile and command line, never by name)."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.server.etcd import EmbeddedEtcd, EtcdServerError


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat_file:  # a zombie is not alive
        return stat_file.read().split(") ", 1)[1][0] != "Z"


def wait_until(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def tcp_listeners(pid: int) -> list[str]:
    """Listening TCP sockets of ``pid`` (ss, somebody else's tool)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"pid={pid}," in line]


def test_start_restart_stop(tmp_path: Path, etcdctl: Callable[..., str]) -> None:
    with EmbeddedEtcd(tmp_path, max_txn_ops=512) as etcd:
        assert etcd.endpoint.startswith("unix:///")
        assert (tmp_path / "etcd" / "member").is_dir() and etcd.log_path.exists()
        etcdctl("put", "/probe", "kept", endpoint=etcd.endpoint)
        endpoint, first_pid = etcd.endpoint, etcd.pid
        assert first_pid is not None and etcd.pid_path.read_text().strip() == str(first_pid)
        etcd.stop()
        assert not etcd.running and not pid_alive(first_pid) and not etcd.pid_path.exists()
        etcd.start()
        assert etcd.endpoint == endpoint and etcd.pid != first_pid
        assert etcdctl("get", "/probe", "--print-value-only", endpoint=etcd.endpoint).strip() == "kept"
        pid = etcd.pid
    assert pid is not None and not pid_alive(pid)


def test_only_unix_sockets_private_to_the_server(tmp_path: Path, etcdctl: Callable[..., str]) -> None:
    with EmbeddedEtcd(tmp_path) as etcd:
        assert etcd.pid is not None
        assert tcp_listeners(etcd.pid) == []  # no TCP port anyone on this machine could reach
        sock = Path(etcd.endpoint[len("unix://"):])
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
        etcdctl("put", "/virtplane/probe", "root may", endpoint=etcd.endpoint)
        if os.geteuid() == 0:  # another local user cannot write a Host spec any more
            nobody = pwd.getpwnam("nobody")
            done = subprocess.run(
                ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                 "/usr/bin/etcdctl", f"--endpoints={etcd.endpoint}", "--dial-timeout=2s",
                 "--command-timeout=3s", "put", "/virtplane/specs/Host/evil", "x"],
                capture_output=True, text=True, env={"ETCDCTL_API": "3"}, timeout=30, check=False,
            )
            assert done.returncode != 0, done.stdout
            assert etcdctl("get", "/virtplane/specs/Host/evil", endpoint=etcd.endpoint) == ""


def test_long_data_dir_gets_a_short_private_socket_dir(tmp_path: Path, etcdctl: Callable[..., str]) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with EmbeddedEtcd(deep) as etcd:
        assert not str(etcd.socket_dir).startswith(str(deep))
        assert stat.S_IMODE(etcd.socket_dir.stat().st_mode) == 0o700
        etcdctl("put", "/probe", "ok", endpoint=etcd.endpoint)


def test_auto_compaction_drops_old_history(tmp_path: Path, etcdctl: Callable[..., str]) -> None:
    with EmbeddedEtcd(tmp_path, auto_compaction_retention="1s") as etcd:
        assert "--auto-compaction-retention" in etcd._command()
        for i in range(5):
            etcdctl("put", "/probe", str(i), endpoint=etcd.endpoint)

        def compacted() -> bool:
            etcdctl("put", "/probe", "again", endpoint=etcd.endpoint)
            done = subprocess.run(["/usr/bin/etcdctl", f"--endpoints={etcd.endpoint}", "get", "/probe", "--rev=2"],
                                  capture_output=True, text=True, env={"ETCDCTL_API": "3"}, check=False)
            return "compacted" in done.stderr

        wait_until("etcd to compact its history by itself", compacted, 30)
    assert EmbeddedEtcd(tmp_path).auto_compaction_retention == "1h"  # the server's default: on


def test_dies_with_its_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from controller.server.etcd import EmbeddedEtcd
        etcd = EmbeddedEtcd({str(tmp_path)!r})
        etcd.start()
        print(etcd.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    assert parent.stdout is not None
    with parent.stdout:
        etcd_pid = int(parent.stdout.readline())
    assert pid_alive(etcd_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_until("etcd to exit after its parent was killed", lambda: not pid_alive(etcd_pid), 20)


def test_a_stale_etcd_of_the_same_data_dir_is_stopped(tmp_path: Path, etcdctl: Callable[..., str]) -> None:
    crashed = EmbeddedEtcd(tmp_path)
    crashed.start()
    etcdctl("put", "/probe", "survives", endpoint=crashed.endpoint)
    stale = crashed.pid
    assert stale is not None
    # The server that started it is gone; its etcd still runs (no parent-death signal reached it).
    orphan, crashed._proc = crashed._proc, None
    assert orphan is not None
    try:
        again = EmbeddedEtcd(tmp_path)
        again.start()
        try:
            assert not pid_alive(stale) and again.pid != stale
            assert "stopped a stale etcd (pid" in again.log_path.read_text()
            assert etcdctl("get", "/probe", "--print-value-only", endpoint=again.endpoint).strip() == "survives"
        finally:
            again.stop()
    finally:
        if pid_alive(stale):
            os.kill(stale, signal.SIGKILL)
        orphan.wait()


def test_a_pidfile_naming_another_process_signals_nothing(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / "etcd.pid").write_text(f"{other.pid}\n")
        with EmbeddedEtcd(tmp_path) as etcd:
            assert etcd.running
        assert other.poll() is None  # not ours: never signalled
    finally:
        other.kill()
        other.wait()


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        etcd = EmbeddedEtcd(tmp_path, client_port=busy.getsockname()[1], start_timeout=20, listen="tcp")
        with pytest.raises(EtcdServerError) as err:
            etcd.start()
    assert "exited" in str(err.value) and "address already in use" in str(err.value)
    assert not etcd.running


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EtcdServerError, match="not found"):
        EmbeddedEtcd(tmp_path, binary=str(tmp_path / "no-etcd")).start()
