"""Helpers for the controller end-to-end tests: the CLI against one server, polling with deadlines,
manifests, and `virsh` (somebody else's libvirt client) for real QEMU hosts.

- ``Cli(server)``: ``cli("get", "vms")`` -> CompletedProcess; ``cli.ok(...)`` asserts exit 0 and returns
  stdout. For polling (a CLI run costs ~1 s of Python start-up here) ``cli.obj("vm", name)`` (None when
  absent), ``cli.objs("vms", selector)`` and ``cli.events(...)`` read the same server's REST API with the
  SDK client and the CLI's own config file.
- ``wait_for(what, probe, timeout)``: polls until ``probe()`` is truthy; fails naming ``what``.
- ``vm_doc``/``manifest``: YAML text for objects; ``condition(obj, type)``: a condition's status.
- ``virsh(uri, ...)``, ``virsh_names(uri)``: the lab hosts seen by virsh.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from controller.client.sdk import Client, NotFound
from specs.kinds import resolve_kind
from tests.e2e.conftest import REPO, VIRTPLANE, ServerProcess

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Cli:
    """The `virtplane` CLI pointed at one server (its own config file)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self._config = json.loads(Path(server.env["VIRTPLANE_CONFIG"]).read_text())

    def api(self) -> Client:
        """A fresh SDK client (use it in a ``with``: it holds a connection pool)."""
        return Client(self._config["server"], self._config["token"], timeout=30)

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VIRTPLANE, *args], env=self.server.env, input=input, capture_output=True, text=True,
                              timeout=timeout, check=False, cwd=REPO)

    def ok(self, *args: str, timeout: float = 60) -> str:
        done = self(*args, timeout=timeout)
        assert done.returncode == 0, (f"virtplane {' '.join(args)} exited {done.returncode}:\n"
                                      f"{done.stdout}\n{done.stderr}")
        return done.stdout

    def obj(self, kind: str, name: str) -> dict[str, Any] | None:
        with self.api() as api:
            try:
                return api.get(resolve_kind(kind).plural, name)
            except NotFound:
                return None

    def objs(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        with self.api() as api:
            return api.list(resolve_kind(kind).plural, selector)

    def events(self, *, correlation_id: str | None = None, for_ref: str | None = None) -> list[dict[str, Any]]:
        involved = None
        if for_ref:
            kind, _, name = for_ref.partition("/")
            involved = f"{resolve_kind(kind).kind}/{name}"
        with self.api() as api:
            return api.events(involved=involved, correlation_id=correlation_id)

    def apply(self, path: Path, correlation_id: str | None = None) -> str:
        args = ["apply", "-f", str(path)] + (["--correlation-id", correlation_id] if correlation_id else [])
        return self.ok(*args)

    def wait_ready(self, names: Iterable[str], timeout: float) -> None:
        """`virtplane wait` for every VM named: Ready=True (the CLI's own deadline, plus slack)."""
        for name in names:
            done = self("wait", f"vm/{name}", "--for", "condition=Ready", "--timeout", str(timeout),
                        timeout=timeout + 30)
            assert done.returncode == 0, f"vm/{name} not Ready:\n{done.stderr}\n{self('describe', f'vm/{name}').stdout}"


def condition(obj: dict[str, Any] | None, type_: str) -> str | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or ():
        if c["type"] == type_:
            return c["status"]  # type: ignore[no-any-return]
    return None


def is_ready(obj: dict[str, Any] | None) -> bool:
    return condition(obj, "Ready") == "True"


def manifest(*docs: dict[str, Any]) -> str:
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cluster_doc(name: str) -> dict[str, Any]:
    return {"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": name}, "spec": {}}


def host_doc(name: str, cluster: str, uri: str = "test:///default") -> dict[str, Any]:
    return {"apiVersion": "virtplane.io/v1", "kind": "Host", "metadata": {"name": name},
            "spec": {"cluster": cluster, "uri": uri}}


def vm_doc(name: str, cluster: str, *, memory: str = "512Mi", max_memory: str | None = None, cores: int = 1,
           labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    mem: dict[str, Any] = {"size": memory}
    if max_memory:
        mem["maxSize"] = max_memory
    return {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"cluster": cluster, "cpu": {"cores": cores}, "memory": mem, **spec}}


def dedent(text: str) -> str:
    return textwrap.dedent(text)


# -- virsh: a libvirt client that is not ours -------------------------------------------------------

def virsh(uri: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)} on {uri} failed: {proc.stderr.strip()}")
    return proc.stdout


def virsh_names(uri: str, *, all_: bool = True) -> list[str]:
    """Domain names as virsh lists them (with duplicates, if a host ever had any)."""
    out = virsh(uri, "list", "--name", *(["--all"] if all_ else []))
    return [line.strip() for line in out.splitlines() if line.strip()]


def virsh_state(uri: str, name: str) -> str | None:
    proc = subprocess.run(["virsh", "-c", uri, "domstate", name], capture_output=True, text=True, timeout=60,
                          check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


# -- servers that tests kill and restart -------------------------------------------------------------

class Servers:
    """Every `virtplane server` a test starts; ``stop_all()`` (in a fixture's finally) stops each one
    still running, by its own Popen handle. ``start(name)`` restarts on the same data dir."""

    def __init__(self, base: Path, etcd: Any) -> None:
        self.base = base
        self.etcd = etcd
        self.started: list[ServerProcess] = []
        self.current: dict[str, ServerProcess] = {}

    def start(self, name: str) -> ServerProcess:
        from tests.e2e.conftest import start_server

        proc = start_server(self.base / name, etcd=self.etcd)
        self.started.append(proc)
        self.current[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL: no graceful shutdown, no lease revoked."""
        proc = self.current[name].proc
        proc.kill()
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop()


def identity_of(server: ServerProcess) -> str:
    """The controller identity a server campaigns with (`virtplane server`: hostname-pid)."""
    import socket

    return f"{socket.gethostname()}-{server.proc.pid}"


def guest_vm_doc(name: str, cluster: str, image: Any, **spec: Any) -> dict[str, Any]:
    """A VM booting the lab's test guest (direct kernel boot, kernel console on ttyS0)."""
    return vm_doc(name, cluster, memory="256Mi", machine="pc",
                  boot={"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline}, **spec)


# -- lab hosts (root only) ---------------------------------------------------------------------------

@contextlib.contextmanager
def running_lab(directory: Path, hosts: int) -> Iterator[Any]:
    """A Lab of ``hosts`` libvirtd hosts, brought down afterwards (even on failure); skips when the
    machine cannot run one (not root, tools missing) — the same rules and caches as tests/lab."""
    import pytest

    from controller.dev.lab.hosts import Lab
    from tests.lab.conftest import QEMU_CAPS, _bring_down, _skip_reason

    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    lab = Lab(directory, qemu_caps_dir=QEMU_CAPS)
    try:
        lab.up(hosts)
        yield lab
    finally:
        _bring_down(lab)


def lab_guest_image() -> Any:
    """The test guest (kernel + initrd), built once and cached like tests/lab does."""
    from controller.dev.lab.guest import build_guest_image
    from tests.lab.conftest import GUEST_CACHE

    return build_guest_image(GUEST_CACHE)


def lab_accel(image: Any) -> str:
    """"kvm" or "tcg": what the (cached) probe boot of the test guest found, as tests/lab uses."""
    from controller.dev.lab.guest import probe_accel
    from tests.lab.conftest import GUEST_CACHE

    return str(probe_accel(image, GUEST_CACHE).accel)


@asynccontextmanager
async def running_manager(store: Any, data_dir: Path, identity: str = "inproc-e2e") -> AsyncIterator[Any]:
    """A Manager (every controller) running in this process on ``store``, cancelled on exit."""
    import anyio

    from controller.controllers.registry import default_registry
    from controller.runtime.manager import Manager, ManagerOptions

    manager = Manager(store, default_registry(), ManagerOptions(data_dir=data_dir, identity=identity, workers=8))
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.run)
        try:
            yield manager
        finally:
            tg.cancel_scope.cancel()
