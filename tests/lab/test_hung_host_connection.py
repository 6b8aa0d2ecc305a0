"""A hung libvirtd under concurrent calls, then killed: the process survives and reconnects.

libvirt 9.0's RPC client frees a connection's client under the threads waiting in it when its keepalive
gives up on a frozen daemon with several calls queued; when the daemon then dies the process crashes (seen
as the server vanishing in test_ha's hung-host test). HostConnection gives each call a connection of its own.
The scenario runs in a child process: a crash fails this test with the child's stacks instead of killing
pytest. Against a HostConnection that shares one connection between calls it crashed in every trial.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from controller.adapters.libvirt.connection import Conn, HostConnection
from controller.dev.lab.hosts import Lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 2


def test_frozen_then_killed_libvirtd_under_concurrent_calls_does_not_crash(new_lab: Lab) -> None:
    new_lab.up(1)
    run = subprocess.run([sys.executable, "-m", "tests.lab.hung_host_scenario", str(new_lab.dir), str(TRIALS)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"the scenario exited with {run.returncode}:\n{run.stderr[-6000:]}"
    trials = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(trials) == TRIALS
    for trial in trials:
        assert trial["ready_before"] and trial["heartbeats_not_ready"] > 0, trial
        assert trial["errors"].get("ConnectionLost", 0) > 0, trial  # the callers were told, not hung
        assert trial["after_power_off"] == "ConnectionLost", trial
        assert trial["reconnected_s"] < 30, trial


def _admin_clients(lab: Lab, name: str) -> int:
    """Clients connected to the host's libvirtd, as libvirt's own admin client lists them."""
    socket = Path(lab.host(name).dir) / "run" / "libvirt-admin-sock"
    out = subprocess.run(["virt-admin", "-c", f"libvirtd:///system?socket={socket}", "srv-clients-list", "libvirtd"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return sum(1 for line in out.splitlines() if line.split() and line.split()[0].isdigit())


async def test_each_call_has_a_connection_of_its_own(new_lab: Lab) -> None:
    name = new_lab.up(1)[0].name
    before = _admin_clients(new_lab, name)
    host = HostConnection(name, new_lab.host(name).uri, capacity=4)
    inside: Counter[int] = Counter()
    most: Counter[int] = Counter()
    lock = threading.Lock()

    def call(conn: Conn) -> None:
        with lock:
            inside[id(conn)] += 1
            most[id(conn)] = max(most[id(conn)], inside[id(conn)])
        conn.getInfo()
        time.sleep(0.2)
        with lock:
            inside[id(conn)] -= 1

    async with host:
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(host.run, "getInfo", call)
        assert set(most.values()) == {1}, "two calls were inside one connection at once"
        assert len(most) == 4, "as many connections as calls the limiter lets in, reused"
        assert host.calls["open"] == 4
        assert _admin_clients(new_lab, name) == before + 4
    assert _admin_clients(new_lab, name) == before, "close() closed them all"
