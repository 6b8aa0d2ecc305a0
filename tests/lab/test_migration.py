"""Live migration end to end on lab hosts with real QEMU, through a real `virtplane server` and the CLI.

By constraint (allowedHosts), by request (`virtplane migrate --to --wait`), by maintenance, and a guest that
dirties memory faster than the migration copies it: fallback Abort (Failed, still on the source) and
fallback PostCopy (completes). Every move is checked with `virsh list` on both hosts, and the guest's
serial log shows it was not rebooted (one READY marker). Root only (see conftest).
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.client.sdk import Client, NotFound
from controller.dev.lab.cli import lab_manifests
from controller.dev.lab.guest import READY_MARKER, GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import VIRTPLANE, ServerProcess, etcdctl_run, start_server
from tests.e2e.helpers import virsh, wait_for

pytestmark = pytest.mark.lab

CLUSTER = "lab"


def running(uri: str) -> set[str]:
    return set(virsh(uri, "list", "--name").split())


def defined(uri: str) -> set[str]:
    return set(virsh(uri, "list", "--all", "--name").split())


@dataclass
class World:
    lab: Lab
    server: ServerProcess
    api: Client
    image: GuestImage
    accel: str
    dir: Path
    etcd: EmbeddedEtcd

    @property
    def uris(self) -> dict[str, str]:
        return {h.name: h.uri for h in self.lab.status()}

    def vp(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VIRTPLANE, *args], env=self.server.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def apply(self, *docs: dict[str, Any]) -> None:
        path = self.dir / f"apply-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
        done = self.vp("apply", "-f", str(path))
        assert done.returncode == 0, done.stderr

    def status(self, kind: str, name: str) -> dict[str, Any]:
        try:
            return self.api.get(kind, name).get("status") or {}
        except NotFound:
            return {}

    def cluster(self, **migration: Any) -> dict[str, Any]:
        return {"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": CLUSTER},
                "spec": {"migration": migration}}

    def hosts(self, maintenance: str | None = None) -> list[dict[str, Any]]:
        docs = lab_manifests(self.lab.status(), self.lab.shared_dir, CLUSTER, accel=self.accel)
        for doc in docs:
            if doc["kind"] == "Host" and doc["metadata"]["name"] == maintenance:
                doc["spec"]["maintenance"] = True
        return docs

    def vm(self, name: str, allowed: list[str] | None = None, dirty_mb: int | None = None) -> list[dict[str, Any]]:
        disk = {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": f"{name}-root"},
                "spec": {"storageDomain": "lab-shared", "size": "16Mi"}}
        spec: dict[str, Any] = {
            "cluster": CLUSTER, "runStrategy": "Always", "machine": "pc",
            "cpu": {"cores": 1, "maxCores": 1}, "memory": {"size": "256Mi", "maxSize": "256Mi"},
            "disks": [{"disk": f"{name}-root"}],
            "boot": {"kernel": str(self.image.kernel), "initrd": str(self.image.initrd),
                     "cmdline": self.image.cmdline_with(dirty_mb=dirty_mb)},
            "placement": {"allowedHosts": allowed or []},
        }
        vm = {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}
        return [disk, vm]

    def host_of(self, name: str) -> str:
        where = [h for h, uri in self.uris.items() if name in running(uri)]
        assert len(where) == 1, f"{name} runs on {where}: a VM runs on exactly one host"
        return where[0]

    def console_logs(self, name: str) -> str:
        """The guest's serial console as logged by every host it ran on (/var/log/libvirt/qemu per host)."""
        logs = [self.lab.dir / "hosts" / h / "log" / "qemu" / f"{name}.console.log" for h in self.uris]
        return "".join(p.read_text(errors="replace") for p in logs if p.exists())

    def boot(self, name: str, host: str) -> None:
        """Wait for the controller to start ``name`` on ``host`` and for the guest and its status."""
        uri = self.uris[host]
        wait_for(f"{name} running on {host}", lambda: name in running(uri), 60)
        wait_for(f"{READY_MARKER} from {name}", lambda: READY_MARKER in self.console_logs(name), 90)
        wait_for(f"vm/{name} Running", lambda: self.status("virtualmachines", name).get("phase") == "Running", 30)

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.api.events(involved=f"VirtualMachine/{name}")


@pytest.fixture(scope="module")
def world(lab: Lab, guest_image: GuestImage, accel: str, etcd: EmbeddedEtcd,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")
    data = tmp_path_factory.mktemp("migration-server")
    server = start_server(data, etcd=etcd, env_extra={"VIRTPLANE_LOG_LEVEL": "INFO"})
    config = json.loads((data / "config.json").read_text())
    api = Client(config["server"], config.get("token"))
    w = World(lab, server, api, guest_image, accel, data, etcd)
    try:
        w.apply(w.cluster(), *w.hosts())
        wait_for("hosts Ready", lambda: all(
            w.status("hosts", h).get("phase") == "Ready" for h in ("lab-1", "lab-2")), 60)
        yield w
    finally:
        w.api.close()
        w.server.stop()  # the one running now (a test may have restarted it)
        for uri in w.uris.values():  # leave the lab's hosts empty for the next module
            for name in defined(uri):
                subprocess.run(["virsh", "-c", uri, "destroy", name], capture_output=True, check=False)
                subprocess.run(["virsh", "-c", uri, "undefine", name], capture_output=True, check=False)


def assert_moved(w: World, name: str, source: str, target: str, timeout: float = 60) -> None:
    uris = w.uris
    wait_for(f"{name} running on {target} only",
             lambda: name in running(uris[target]) and name not in defined(uris[source]), timeout)
    assert w.host_of(name) == target
    wait_for(f"vm/{name} status on {target}", lambda: (s := w.status("virtualmachines", name)).get("host") == target
             and s.get("phase") == "Running", 30)
    assert w.console_logs(name).count(READY_MARKER) == 1, "the guest booted again: a migration must not reboot it"


def test_migrate_by_constraint(world: World) -> None:
    w = world
    w.apply(*w.vm("mig-a", allowed=["lab-1"]))
    w.boot("mig-a", "lab-1")
    assert w.host_of("mig-a") == "lab-1"

    changed = time.monotonic()
    w.apply(w.vm("mig-a", allowed=["lab-2"])[1])
    assert_moved(w, "mig-a", "lab-1", "lab-2")
    print(f"\nconstraint change -> running on lab-2 only: {time.monotonic() - changed:.2f} s")
    migrated = [e for e in w.events("mig-a") if e["reason"] == "Migrated"]
    assert migrated and "lab-1 -> lab-2" in migrated[-1]["message"], w.events("mig-a")
    print(f"event: {migrated[-1]['message']}")
    info = virsh(w.uris["lab-2"], "domjobinfo", "--completed", "mig-a")
    assert "Completed" in info, info


class Watcher:
    """`virtplane get migrations -w`, its output collected as it comes (a reader thread); on a pseudo-terminal
    when ``tty``."""

    def __init__(self, w: World, tty: bool) -> None:
        self.tty = tty
        self.chunks: list[bytes] = []
        env = {**w.server.env, "COLUMNS": "200", "LINES": "40"}
        args = [VIRTPLANE, "get", "migrations", "-w"]
        if tty:
            self.fd, slave = pty.openpty()
            self.proc = subprocess.Popen(args, env=env, stdin=slave, stdout=slave, stderr=slave)
            os.close(slave)
        else:
            read, write = os.pipe()
            self.proc = subprocess.Popen(args, env=env, stdout=write, stderr=write)
            os.close(write)
            self.fd = read
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            self.chunks.append(chunk)
        os.close(self.fd)

    @property
    def output(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def wait_for(self, *texts: str, timeout: float = 30) -> None:
        """Until the output shows one of ``texts``."""
        wait_for(f"{texts!r} from get -w (tty={self.tty})", lambda: any(t in self.output for t in texts), timeout)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        return self.output


def test_migrate_by_request_with_the_cli(world: World) -> None:
    w = world
    w.apply(w.vm("mig-a")[1])  # no constraint any more: it stays where it is
    watchers = [Watcher(w, tty=False), Watcher(w, tty=True)]
    try:
        for watcher in watchers:  # listed (a header, or on a terminal the empty table) and watching
            watcher.wait_for("PROGRESS", "No migrations found.")
        done = w.vp("migrate", "vm/mig-a", "--to", "lab-1", "--wait", "--timeout", "120")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Succeeded" in done.stdout and "downtime" in done.stdout, done.stdout
        print(f"\n{done.stdout.strip()}")
        assert_moved(w, "mig-a", "lab-2", "lab-1")
        # `get -w` follows the Migration with a progress bar: a line per change through a pipe, one table
        # redrawn in place on a terminal.
        for watcher in watchers:
            watcher.wait_for("[====================] 100%")
    finally:
        lines, screen = (watcher.stop() for watcher in watchers)
    rows = [line for line in lines.splitlines() if "mig-a" in line]
    assert rows and "Succeeded" in rows[-1] and "[====================] 100%" in rows[-1], lines
    assert lines.count("PROGRESS") == 1, lines
    assert "Succeeded" in screen and "[====================] 100%" in screen, screen
    assert screen.count("PROGRESS") >= 2, f"the live table was not redrawn: {screen!r}"

    refused = w.vp("migrate", "vm/mig-a", "--to", "lab-9", "--wait", "--timeout", "60")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Failed" in refused.stderr and "no host lab-9" in refused.stderr, refused.stderr
    assert w.host_of("mig-a") == "lab-1"


def test_maintenance_evacuates_the_host(world: World) -> None:
    w = world
    assert w.host_of("mig-a") == "lab-1"
    w.apply(*w.hosts(maintenance="lab-1"))
    try:
        assert_moved(w, "mig-a", "lab-1", "lab-2")
    finally:
        w.apply(*w.hosts())
    w.apply({**w.vm("mig-a")[1], "spec": {**w.vm("mig-a")[1]["spec"], "runStrategy": "Manual"}})
    virsh(w.uris["lab-2"], "destroy", "mig-a")  # runStrategy Manual: it stays off (frees CPU for the next test)


def _migration_of(w: World, vm: str) -> tuple[str, dict[str, Any]]:
    items = [m for m in w.api.list("migrations") if m["spec"]["vm"] == vm]
    assert items, "no Migration"
    latest = max(items, key=lambda m: m["metadata"]["creationTimestamp"])
    return latest["metadata"]["name"], latest.get("status") or {}


def test_not_converging_aborts_then_post_copy_completes(world: World) -> None:
    w = world
    tight = {"maxDowntimeMs": 1, "bandwidthMiBps": 4, "autoConverge": False, "convergenceTimeoutSeconds": 15}
    w.apply(w.cluster(**tight, fallback="Abort"))
    w.apply(*w.vm("mig-d", allowed=["lab-1"], dirty_mb=96))
    w.boot("mig-d", "lab-1")
    wait_for("the dirtier", lambda: "dirtying" in w.console_logs("mig-d"), 30)
    w.apply(w.vm("mig-d", dirty_mb=96)[1])  # no constraint any more: it stays on lab-1

    started = time.monotonic()
    cli = subprocess.Popen([VIRTPLANE, "migrate", "vm/mig-d", "--to", "lab-2", "--wait", "--timeout", "90"],
                           env=w.server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # While it runs: the VM says Migrating, the Migration says Running with progress from QEMU's job stats.
        wait_for("vm/mig-d Migrating", lambda: w.status("virtualmachines", "mig-d").get("phase") == "Migrating", 20,
                 interval=0.3)
        name, running_status = wait_for("progress in the Migration's status", lambda: (
            m := _migration_of(w, "mig-d"))[1].get("phase") == "Running" and m[1].get("dataProcessed") and m, 20,
            interval=0.3)
        assert running_status["sourceHost"] == "lab-1" and running_status["targetHost"] == "lab-2"
        assert w.status("virtualmachines", "mig-d").get("migration") == name
        out, errors = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    done = subprocess.CompletedProcess(cli.args, cli.returncode, out, errors)
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Failed" in done.stderr and "not converged within 15 s" in done.stderr, done.stderr
    assert 15 <= took < 60, took
    assert w.host_of("mig-d") == "lab-1" and "mig-d" not in defined(w.uris["lab-2"])
    aborted = [e for e in w.events("mig-d") if e["reason"] == "MigrationAborted"]
    assert aborted and "still runs on lab-1" in aborted[-1]["message"]
    print(f"\nabort after {took:.1f} s: {aborted[-1]['message']}")

    w.apply(w.cluster(**tight, postCopy=True, fallback="PostCopy"))
    started = time.monotonic()
    done = w.vp("migrate", "vm/mig-d", "--to", "lab-2", "--wait", "--timeout", "120")
    took = time.monotonic() - started
    _, status = _migration_of(w, "mig-d")
    events = [e["message"] for e in w.events("mig-d")]
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nstatus {status}\nevents {events}"
    assert_moved(w, "mig-d", "lab-1", "lab-2")
    assert status.get("phase") == "Succeeded" and took >= 15, (status, took)
    switched = [m for m in events if "StartPostCopy mig-d on lab-1" in m]
    assert switched, f"the budget passed without a switch to post-copy: {events}"
    print(f"post-copy fallback: Succeeded after {took:.1f} s: {done.stdout.strip()}")


def test_server_killed_mid_migration_the_migration_completes_and_is_reported(world: World) -> None:
    """Peer to peer, the source libvirtd drives the migration: SIGKILL of the only server (controllers
    included) does not stop it. After a restart the controller watches it instead of starting another,
    then reports the VM on the target and the Migration Succeeded; the VM ran on one host at a time."""
    w = world
    w.apply(w.cluster(bandwidthMiBps=12))  # slow enough (several s) to kill the server and restart it meanwhile
    w.apply(*w.vm("mig-k", allowed=["lab-1"]))
    w.boot("mig-k", "lab-1")
    w.apply(w.vm("mig-k")[1])
    assert w.vp("migrate", "vm/mig-k", "--to", "lab-2").returncode == 0
    name, _ = wait_for("Migration Running", lambda: (m := _migration_of(w, "mig-k"))[1].get("phase") == "Running"
                       and m, 30, interval=0.2)
    assert "Unbounded" in virsh(w.uris["lab-1"], "domjobinfo", "mig-k")  # libvirt is migrating it
    killed = time.monotonic()
    w.server.proc.kill()
    w.server.proc.wait()
    assert "Unbounded" in virsh(w.uris["lab-1"], "domjobinfo", "mig-k"), "the migration stopped with the server"

    restarted = start_server(w.dir, etcd=w.etcd, env_extra={"VIRTPLANE_LOG_LEVEL": "INFO"})
    config = json.loads((w.dir / "config.json").read_text())
    api = Client(config["server"], config.get("token"))
    old_api, w.server, w.api = w.api, restarted, api
    try:
        status = wait_for(f"migration/{name} finished", lambda: (s := w.status("migrations", name)).get("phase")
                          in ("Succeeded", "Failed") and s, 120, interval=0.3)
        print(f"\nserver killed {time.monotonic() - killed:.1f} s before: migration/{name} {status['phase']}: "
              f"{status['conditions'][0]['message']}")
        assert status["phase"] == "Succeeded", status
        assert status["sourceHost"] == "lab-1" and status["targetHost"] == "lab-2", status
        assert "lab-1 -> lab-2" in status["conditions"][0]["message"], status
        assert_moved(w, "mig-k", "lab-1", "lab-2")
        started = [e for e in w.events("mig-k") if "MigrateDomain" in e["message"]]
        assert len(started) <= 1, f"a second migration was started: {[e['message'] for e in started]}"
    finally:
        old_api.close()
        w.apply(w.cluster())
