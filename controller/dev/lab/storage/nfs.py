"""NFS in the lab: nfs-ganesha (FSAL VFS) exporting ``<dir>/export``, registered with its own rpcbind.

The kernel here has no NFS client, so hosts reach the export with QEMU's userspace client (libnfs,
``<disk type='network'><source protocol='nfs'>``). libnfs finds mountd and nfsd only through the
portmapper on port 111, so the lab needs an rpcbind on 111 and ganesha registered there: **one lab NFS
server per machine**. Ganesha's own ports are fixed and away from the usual 2049/20048.

rpcbind and ganesha share a private mount namespace in which ``<dir>/run`` is mounted over ``/run``:
rpcbind's socket, lock and warm-start files, and ganesha's run files, stay under the lab directory, and
ganesha registers with *our* rpcbind through its unix socket. Layout::

    <dir>/ganesha.conf   generated      <dir>/export/    the exported directory (images)
    <dir>/run/           /run of both   <dir>/recovery/  NFSv4 recovery (Graceless: no grace period)
    <dir>/log/{rpcbind,ganesha}.log     <dir>/{rpcbind,ganesha}.pid     <dir>/state.json (namespace id)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from controller.dev.lab.storage import procs
from controller.dev.lab.storage.model import NfsServer, StorageError

ADDRESS = "127.0.0.1"
RPCBIND_PORT = 111
NFS_PORT = 20490
MOUNT_PORT = 20491
RQUOTA_PORT = 20493  # ganesha binds it even with RQUOTA disabled on some builds; keep it ours
NFS_PROGRAM, MOUNT_PROGRAM = 100003, 100005


def render_ganesha_conf(export: Path, recovery: Path) -> str:
    return f"""# written by virtplane lab; rewritten on every start
NFS_CORE_PARAM {{
    NFS_Port = {NFS_PORT};
    MNT_Port = {MOUNT_PORT};
    Rquota_Port = {RQUOTA_PORT};
    Bind_Addr = {ADDRESS};
    Protocols = 3, 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{recovery}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "{export}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Transports = TCP;
    Protocols = 3, 4;
    FSAL {{ Name = VFS; }}
}}
LOG {{
    Default_Log_Level = EVENT;
}}
"""


class NfsBackend:
    kind = "nfs"

    def __init__(self, directory: Path, start_timeout: float) -> None:
        self.dir = directory
        self.timeout = start_timeout
        self.conf = directory / "ganesha.conf"
        self.export = directory / "export"
        self.run_dir = directory / "run"
        self.recovery = directory / "recovery"
        self.logs = directory / "log"
        self.rpcbind_pidfile = directory / "rpcbind.pid"
        self.ganesha_pidfile = directory / "ganesha.pid"
        self.state_file = directory / "state.json"
        self.rpcbind_owner = procs.Owner("rpcbind", views=(("/run", self.run_dir),))
        self.ganesha_owner = procs.Owner("ganesha.nfsd", marks=(str(self.conf),))

    # -- discovery ---------------------------------------------------------------------------------

    def _rpcbind(self) -> int | None:
        pid = procs.read_pid(self.rpcbind_pidfile)
        return pid if self.rpcbind_owner.owns(pid) else None

    def _ganesha(self) -> int | None:
        pid = procs.read_pid(self.ganesha_pidfile)
        return pid if self.ganesha_owner.owns(pid) else None

    def status(self) -> NfsServer:
        rpcbind, ganesha = self._rpcbind(), self._ganesha()
        return NfsServer(
            kind="nfs",
            running=rpcbind is not None and ganesha is not None and self._registered(),
            address=ADDRESS,
            export=self.export,
            nfs_port=NFS_PORT,
            mount_port=MOUNT_PORT,
            rpcbind_pid=rpcbind,
            ganesha_pid=ganesha,
            dir=self.dir,
        )

    def _registered(self) -> bool:
        """rpcbind on 111 lists ganesha's nfs v3 and mountd v3 on TCP at our ports."""
        done = procs.run(["rpcinfo", "-p", ADDRESS], timeout=10, check=False)
        rows = {tuple(line.split()[:4]) for line in done.stdout.splitlines()[1:]}
        return (str(NFS_PROGRAM), "3", "tcp", str(NFS_PORT)) in rows and (
            str(MOUNT_PROGRAM), "3", "tcp", str(MOUNT_PORT)
        ) in rows

    # -- up / down ---------------------------------------------------------------------------------

    def up(self) -> NfsServer:
        for tool in ("rpcbind", "ganesha.nfsd", "rpcinfo"):
            if shutil.which(tool) is None:
                raise StorageError(f"nfs: {tool} is not installed (Debian: nfs-ganesha nfs-ganesha-vfs rpcbind)")
        rpcbind, ganesha = self._rpcbind(), self._ganesha()
        if rpcbind is None:
            if ganesha is not None:  # registered with an rpcbind that is gone: start both again
                procs.stop([ganesha], self.ganesha_owner, timeout=10)
                ganesha = None
            rpcbind = self._start_rpcbind()
        if ganesha is None:
            self._start_ganesha(rpcbind)
        return self.status()

    def _start_rpcbind(self) -> int:
        for port in (RPCBIND_PORT, NFS_PORT, MOUNT_PORT):
            if procs.tcp_listening(port):
                raise StorageError(
                    f"nfs: TCP port {port} is already in use by a process the lab did not start. QEMU's libnfs "
                    "finds the NFS server only through the portmapper on port 111, so the lab runs its own "
                    "rpcbind there and ganesha on ports "
                    f"{NFS_PORT}/{MOUNT_PORT}: stop the other rpcbind/NFS server (or the other lab) first"
                )
        for sub in (self.export, self.recovery, self.logs):
            sub.mkdir(parents=True, exist_ok=True)
        if self.run_dir.exists():  # stale sockets and warm-start files of a stopped rpcbind
            shutil.rmtree(self.run_dir)
        (self.run_dir / "rpcbind").mkdir(parents=True)
        with_rpc_user = "chown _rpc /run/rpcbind 2>/dev/null || true"  # rpcbind drops to _rpc
        script = f'set -e\nmount --bind "{self.run_dir}" /run\n{with_rpc_user}\nexec rpcbind -f'
        log = self.logs / "rpcbind.log"
        pid = procs.spawn(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script],
            log,
            self.rpcbind_pidfile,
        )
        procs.wait_until(
            "nfs: rpcbind on port 111",
            lambda: procs.tcp_listening(RPCBIND_PORT) and self.rpcbind_owner.owns(pid),
            self.timeout,
            pid=pid,
            log=log,
        )
        self.state_file.write_text(json.dumps({"rpcbind_pid": pid, "mount_ns": procs.mount_ns(pid)}) + "\n")
        return pid

    def _start_ganesha(self, rpcbind: int) -> int:
        self.conf.write_text(render_ganesha_conf(self.export, self.recovery))
        log = self.logs / "ganesha.log"
        enter = ["nsenter", f"--mount=/proc/{rpcbind}/ns/mnt", "--"]
        ganesha = ["ganesha.nfsd", "-F", "-f", str(self.conf), "-L", str(log), "-p", str(self.ganesha_pidfile)]
        # ganesha writes the same pid into its pidfile itself
        pid = procs.spawn([*enter, *ganesha, "-N", "NIV_EVENT"], self.logs / "ganesha.out", self.ganesha_pidfile)
        procs.wait_until(
            f"nfs: ganesha registered with rpcbind (nfs v3 on {NFS_PORT}, mountd v3 on {MOUNT_PORT})",
            self._registered,
            self.timeout,
            pid=pid,
            log=log,
        )
        return pid

    def down(self, timeout: float = 20.0) -> None:
        rpcbind, ganesha = self._rpcbind(), self._ganesha()
        known = [p for p in (rpcbind, ganesha) if p is not None]
        try:
            ns = json.loads(self.state_file.read_text()).get("mount_ns")
        except (FileNotFoundError, json.JSONDecodeError):
            ns = None
        members = procs.namespace_members(ns, known)
        if ganesha is not None:  # first, so it unregisters from rpcbind
            procs.stop([ganesha], self.ganesha_owner, timeout / 2)
        if rpcbind is not None:
            procs.stop([rpcbind], self.rpcbind_owner, timeout / 2, sig=signal.SIGTERM)
        procs.kill([p for p in members if p != os.getpid()])
