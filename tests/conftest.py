"""Shared fixtures: a real etcd for the whole session, a clean ``Store`` per test.

- ``anyio_backend``: asyncio (mark async tests ``@pytest.mark.anyio``); one event loop for the
  whole session (see ``_one_event_loop_per_session``).
- ``etcd``: the session's EmbeddedEtcd (started once, in a temporary directory).
- ``etcd_endpoint``: its client URL, ``http://127.0.0.1:PORT``.
- ``store``: a connected Store on an empty ``/virtplane/`` keyspace (wiped before each test).
- ``etcd_factory``: ``etcd_factory(**EmbeddedEtcd kwargs)`` starts a private etcd for tests that
  restart or compact it; every one is stopped after the test.
- ``etcdctl``: ``etcdctl("get", "--prefix", "/virtplane/")`` runs /usr/bin/etcdctl against the
  session etcd (``etcdctl(..., endpoint=other.endpoint)`` for another) and returns its stdout.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.pytest_plugin import get_runner

from controller.server.etcd import EmbeddedEtcd
from controller.store import ROOT, Store

ETCDCTL = "/usr/bin/etcdctl"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("virtplane")
    group.addoption("--ha-trials", type=int, default=3,
                    help="fault-injection trials in tests/lab/test_ha_faults.py (CI: 3; 20+ on demand)")
    group.addoption("--ha-seed", type=int, default=None, help="random seed of the fault-injection trials")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fault-injection test runs --ha-trials trials of up to ~2 minutes each: its hang guard grows with them
    (the suite's default, 300 s, fits three on an idle machine but not twenty)."""
    trials = config.getoption("--ha-trials")
    for item in items:
        if item.nodeid.startswith("tests/lab/test_ha_faults.py"):
            item.add_marker(pytest.mark.timeout(600 + 180 * trials))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _one_event_loop_per_session(anyio_backend: str) -> Iterator[None]:
    """Keep anyio's test loop open for the whole session (by holding a lease on anyio's test runner).

    gRPC (under aetcd) delivers each completion to the loop that started the operation; if that
    loop were closed after its test, a late completion (a cancelled watch, a closed channel) would
    fail whichever test runs next with "Event loop is closed"."""
    with get_runner(anyio_backend, {}):
        yield


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    server = EmbeddedEtcd(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_endpoint(etcd: EmbeddedEtcd) -> str:
    return etcd.endpoint


@pytest.fixture
async def store(etcd: EmbeddedEtcd) -> AsyncIterator[Store]:
    store = await Store.connect([etcd.endpoint], max_txn_ops=etcd.max_txn_ops,
                                max_request_bytes=etcd.max_request_bytes)
    try:
        await store.kv.delete_prefix(ROOT.encode())
        yield store
    finally:
        await store.close()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[..., EmbeddedEtcd]]:
    started: list[EmbeddedEtcd] = []

    def make(**kwargs: Any) -> EmbeddedEtcd:
        server = EmbeddedEtcd(tmp_path / f"etcd-{len(started)}", **kwargs)
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def etcdctl(etcd: EmbeddedEtcd) -> Callable[..., str]:
    def run(*args: str, endpoint: str | None = None) -> str:
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(
            [ETCDCTL, f"--endpoints={endpoint or etcd.endpoint}", *args],
            env=env, capture_output=True, text=True, timeout=30, check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    return run
