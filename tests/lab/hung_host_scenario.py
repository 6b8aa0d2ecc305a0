"""The hung-host scenario, run in a child process by ``test_hung_host_connection.py`` (a crash in libvirt
must fail the test, not kill pytest): callers keep one HostConnection busy, the host's libvirtd is frozen
(SIGSTOP) until libvirt's keepalive gives up on it, then powered off (SIGKILL, as fencing does), then
powered on again. Prints one JSON line per trial.

    python -m tests.lab.hung_host_scenario LAB_DIR TRIALS
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import time
from collections import Counter

import anyio

from controller.adapters.libvirt.connection import HostConnection
from controller.adapters.libvirt.errors import ConnectionLost, ReconcileError
from controller.dev.lab.hosts import Lab

CALLERS = 6  # more than the connection's capacity (4): callers queue for every place that frees up
KEEPALIVE = (1, 2)  # libvirt gives up on a silent daemon after ~3 s
FROZEN_S = 6.0


async def _caller(host: HostConnection, stop: anyio.Event, errors: Counter[str]) -> None:
    while not stop.is_set():
        try:
            await host.observe_pool("no-such-pool")
            await host.list_domains()
        except ReconcileError as exc:
            errors[type(exc).__name__] += 1
            await anyio.sleep(0.05)


async def _heartbeat(host: HostConnection, stop: anyio.Event, seen: list[bool]) -> None:
    while not stop.is_set():
        seen.append((await host.observe_host(timeout=2)).ready)
        await anyio.sleep(0.3)


async def _trial(lab: Lab, index: int) -> dict[str, object]:
    name = lab.up(1)[0].name
    host = HostConnection(name, lab.host(name).uri, keepalive=KEEPALIVE, reconnect_base=0.2, reconnect_cap=1.0)
    await host.open()
    ready_before = (await host.observe_host(timeout=10)).ready
    stop, errors, seen = anyio.Event(), Counter[str](), list[bool]()
    async with anyio.create_task_group() as tg:
        for _ in range(CALLERS):
            tg.start_soon(_caller, host, stop, errors)
        tg.start_soon(_heartbeat, host, stop, seen)
        await anyio.sleep(1.0)
        pid = lab.host(name).pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        await anyio.sleep(FROZEN_S)
        await anyio.to_thread.run_sync(lab.power_off, name)
        await anyio.sleep(1.0)
        stop.set()
    try:
        await host.list_domains()
        after_power_off = "answered"
    except ConnectionLost:
        after_power_off = "ConnectionLost"
    lab.power_on(name)
    started = time.monotonic()
    while True:  # the backoff is at most 1 s: a few tries at most
        try:
            await host.list_domains()
            break
        except ConnectionLost:
            if time.monotonic() - started > 30:
                raise
            await anyio.sleep(0.2)
    await host.close()
    return {
        "trial": index,
        "errors": dict(errors),
        "ready_before": ready_before,
        "heartbeats_ready": seen.count(True),
        "heartbeats_not_ready": seen.count(False),
        "after_power_off": after_power_off,
        "reconnected_s": round(time.monotonic() - started, 2),
        "opens": host.calls["open"],
    }


async def _main(lab_dir: str, trials: int) -> None:
    lab = Lab(lab_dir)
    for index in range(trials):
        print(json.dumps(await _trial(lab, index)), flush=True)


if __name__ == "__main__":
    faulthandler.enable()
    anyio.run(_main, sys.argv[1], int(sys.argv[2]))
