"""EmbeddedEtcd: starts healthy, keeps data and endpoint across restarts, fails loudly."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.server.etcd import EmbeddedEtcd, EtcdServerError


def health(endpoint: str) -> bool:
    with urllib.request.urlopen(f"{endpoint}/health", timeout=2) as resp:
        return bool(json.loads(resp.read())["health"] == "true")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_start_restart_stop(tmp_path: Path, etcdctl: Callable[..., str]) -> None:
    with EmbeddedEtcd(tmp_path, max_txn_ops=512) as etcd:
        assert etcd.endpoint.startswith("http://127.0.0.1:") and health(etcd.endpoint)
        assert (tmp_path / "etcd" / "member").is_dir() and etcd.log_path.exists()
        etcdctl("put", "/probe", "kept", endpoint=etcd.endpoint)
        endpoint, first_pid = etcd.endpoint, etcd.pid
        assert first_pid is not None
        etcd.stop()
        assert not etcd.running and not pid_alive(first_pid)
        etcd.start()
        assert etcd.endpoint == endpoint and etcd.pid != first_pid
        assert etcdctl("get", "/probe", "--print-value-only", endpoint=etcd.endpoint).strip() == "kept"
        pid = etcd.pid
    assert pid is not None and not pid_alive(pid)


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        etcd = EmbeddedEtcd(tmp_path, client_port=busy.getsockname()[1], start_timeout=20)
        with pytest.raises(EtcdServerError) as err:
            etcd.start()
    assert "exited" in str(err.value) and "address already in use" in str(err.value)
    assert not etcd.running


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EtcdServerError, match="not found"):
        EmbeddedEtcd(tmp_path, binary=str(tmp_path / "no-etcd")).start()
