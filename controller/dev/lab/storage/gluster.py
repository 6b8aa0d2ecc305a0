"""GlusterFS in the lab: glusterd and one started volume, bricks under the lab directory.

glusterd hard-codes ``/var/lib/glusterd``, ``/var/log/glusterfs`` and ``/var/run/gluster`` (brick sockets
and pidfiles); it runs in a private mount namespace where lab directories are mounted over them, so
nothing lands in the machine's own directories, and everything it spawns (bricks) is found again from
there. Its CLI socket (``glusterd-sockfile``) is a path under the lab directory that the ``gluster`` CLI
reaches from outside with ``--glusterd-sock``.

Facts (glusterfs 10.3, Debian 12):
- glusterd spawns each brick as ``glusterfsd -s <host> ...`` without a port: bricks fetch their volfile
  from ``<host>:24007``. glusterd listening elsewhere (``transport.socket.listen-port``) leaves bricks
  that exit at once ("disconnected from remote-host") and ``volume start`` fails. So 24007 it is: one lab
  Gluster server per machine.
- Brick ports come from ``base-port``..``max-port``; the default 49152 collides with the lab hosts'
  migration ports (49152 + 64 per host), hence 24100-24199 here.
- ``volume create`` refuses 127.0.0.1/localhost as brick host; the machine's host name works (here it
  resolves to 127.0.0.1 through /etc/hosts). Bricks on the root filesystem need ``force``; so do several
  bricks of one replica set on one server (``replica 3`` with three local bricks).
- SIGTERM to glusterd does not stop its bricks: they are stopped by their pidfiles.

Layout: ``<dir>/glusterd.vol``, ``lib/`` ``log/`` ``run/`` (the three mounted dirs), ``bricks/b<N>/``,
``mnt/`` (where hosts mount the volume), ``glusterd.pid``, ``state.json`` (namespace id).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from controller.dev.lab.storage import procs
from controller.dev.lab.storage.model import GlusterServer, StorageError

MANAGEMENT_PORT = 24007
BRICK_PORTS = (24100, 24199)
VOLUME = "vplab"

NAMESPACE_MOUNTS = (("lib", "/var/lib/glusterd"), ("log", "/var/log/glusterfs"), ("run", "/var/run/gluster"))


def render_glusterd_vol(socket_path: Path) -> str:
    low, high = BRICK_PORTS
    return f"""# written by virtplane lab; rewritten on every start
volume management
    type mgmt/glusterd
    option working-directory /var/lib/glusterd
    option transport-type socket
    option transport.socket.listen-port {MANAGEMENT_PORT}
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option base-port {low}
    option max-port {high}
    option glusterd-sockfile {socket_path}
end-volume
"""


def brick_host() -> str:
    """The machine's host name, checked to resolve (gluster refuses 127.0.0.1 as a brick host)."""
    name = socket.gethostname()
    try:
        socket.gethostbyname(name)
    except OSError as err:
        raise StorageError(
            f"gluster: this machine's host name {name!r} does not resolve ({err}); gluster refuses 127.0.0.1 "
            "as a brick host, so add the name to /etc/hosts"
        ) from err
    return name


class GlusterBackend:
    kind = "gluster"

    def __init__(self, directory: Path, start_timeout: float, replica: int | None = None) -> None:
        """``replica``: bricks (all on this machine) and copies of the volume; None = as created before,
        else 1. It is fixed when the volume is created."""
        self.dir = directory
        self.timeout = start_timeout
        self.state_file = directory / "state.json"
        self.replica: int = self._state().get("replica", 1) if replica is None else replica
        if self.replica < 1:
            raise StorageError(f"gluster: replica must be at least 1, got {self.replica}")
        self.vol_file = directory / "glusterd.vol"
        self.socket = directory / "run" / "glusterd.socket"
        self.logs = directory / "log"
        self.pidfile = directory / "glusterd.pid"
        self.mount_path = directory / "mnt"
        self.bricks = tuple(directory / "bricks" / f"b{i}" for i in range(1, self.replica + 1))
        self.glusterd_owner = procs.Owner("glusterd", marks=(str(self.vol_file),))
        self.brick_owner = procs.Owner(
            "glusterfsd", marks=(f"--volfile-id {VOLUME}.",), views=(("/var/lib/glusterd", directory / "lib"),)
        )

    # -- discovery ---------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return state

    def _glusterd(self) -> int | None:
        pid = procs.read_pid(self.pidfile)
        return pid if self.glusterd_owner.owns(pid) else None

    def _brick_pids(self) -> tuple[int, ...]:
        found = (procs.read_pid(p) for p in sorted((self.dir / "run" / "vols").glob("*/*.pid")))
        return tuple(pid for pid in found if pid is not None and self.brick_owner.owns(pid))

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the ``gluster`` CLI against this glusterd (e.g. ``cli("volume", "status")``)."""
        argv = ["gluster", "--mode=script", f"--glusterd-sock={self.socket}", f"--log-file={self.logs / 'cli.log'}"]
        return procs.run([*argv, *args], timeout=timeout, check=check)

    def _online_bricks(self) -> dict[str, int]:
        """Brick path -> port of the volume's bricks that are online (empty if not started)."""
        if self._glusterd() is None:
            return {}
        done = self.cli("volume", "status", VOLUME, "--xml", check=False, timeout=30)
        try:
            root = ET.fromstring(done.stdout)
        except ET.ParseError:
            return {}
        online = {}
        for node in root.iter("node"):
            path, status, port = node.findtext("path"), node.findtext("status"), node.findtext("port")
            if path and status == "1" and port and port.isdigit():
                online[path] = int(port)
        return online

    def status(self) -> GlusterServer:
        glusterd = self._glusterd()
        online = self._online_bricks() if glusterd is not None else {}
        return GlusterServer(
            kind="gluster",
            running=glusterd is not None and all(str(b) in online for b in self.bricks),
            host=socket.gethostname(),
            port=MANAGEMENT_PORT,
            volume=VOLUME,
            bricks=self.bricks,
            replica=self.replica,
            mount_path=self.mount_path,
            glusterd_pid=glusterd,
            brick_pids=self._brick_pids(),
            dir=self.dir,
        )

    # -- up / down ---------------------------------------------------------------------------------

    def up(self) -> GlusterServer:
        for tool in ("glusterd", "gluster", "glusterfsd"):
            if shutil.which(tool) is None:
                raise StorageError(f"gluster: {tool} is not installed (Debian: glusterfs-server)")
        host = brick_host()
        glusterd = self._glusterd() or self._start_glusterd()
        self._ensure_volume(host, glusterd)
        return self.status()

    def _start_glusterd(self) -> int:
        if procs.tcp_listening(MANAGEMENT_PORT):
            raise StorageError(
                f"gluster: port {MANAGEMENT_PORT} is in use by a process the lab did not start; bricks fetch "
                f"their volfile from {MANAGEMENT_PORT} whatever glusterd listens on, so the lab needs it"
            )
        for sub, _ in NAMESPACE_MOUNTS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for brick in self.bricks:
            brick.mkdir(parents=True, exist_ok=True)
        self.mount_path.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self._forget_dead_bricks()
        self.vol_file.write_text(render_glusterd_vol(self.socket))
        lines = ["set -e"]
        for sub, target in NAMESPACE_MOUNTS:
            lines += [f'mkdir -p "{target}"', f'mount --bind "{self.dir / sub}" "{target}"']
        lines.append(
            f'exec glusterd -N -f "{self.vol_file}" -p "{self.pidfile}" --log-file="{self.logs / "glusterd.log"}"'
        )
        log = self.logs / "glusterd.out"
        pid = procs.spawn(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "\n".join(lines)],
            log,
            self.pidfile,
        )
        procs.wait_until(
            "gluster: glusterd answering its CLI",
            lambda: self.socket.exists() and self.cli("volume", "list", check=False).returncode == 0,
            self.timeout,
            pid=pid,
            log=self.logs / "glusterd.log",
        )
        state = {"glusterd_pid": pid, "mount_ns": procs.mount_ns(pid), "replica": self.replica}
        self.state_file.write_text(json.dumps(state) + "\n")
        return pid

    def _forget_dead_bricks(self) -> None:
        """Remove brick pidfiles whose brick is not running. glusterd trusts a brick pidfile whose pid still
        exists, and here a killed brick lingers as a zombie until pid 1 reaps it: glusterd then logs
        "discovered already-running brick" and never starts it."""
        for pidfile in (self.dir / "run" / "vols").glob("*/*.pid"):
            if not self.brick_owner.owns(procs.read_pid(pidfile)):
                pidfile.unlink(missing_ok=True)

    def _ensure_volume(self, host: str, glusterd: int) -> None:
        if self.cli("volume", "info", VOLUME, check=False).returncode != 0:
            layout = ["replica", str(self.replica)] if self.replica > 1 else []
            self.cli("volume", "create", VOLUME, *layout, *(f"{host}:{b}" for b in self.bricks), "force")
        if "Status: Started" not in self.cli("volume", "info", VOLUME).stdout:
            self.cli("volume", "start", VOLUME)
        procs.wait_until(
            f"gluster: bricks of volume {VOLUME} online",
            lambda: all(str(b) in self._online_bricks() for b in self.bricks),
            self.timeout,
            pid=glusterd,
            log=self.logs / "bricks",
        )

    def down(self, timeout: float = 20.0) -> None:
        glusterd, bricks = self._glusterd(), self._brick_pids()
        known = [p for p in (glusterd, *bricks) if p is not None]
        members = procs.namespace_members(self._state().get("mount_ns"), known)
        if glusterd is not None:
            procs.stop([glusterd], self.glusterd_owner, timeout / 2)
        procs.stop(bricks, self.brick_owner, timeout / 2)
        procs.kill(members)
        self._forget_dead_bricks()
