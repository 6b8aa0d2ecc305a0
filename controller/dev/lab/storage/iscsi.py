"""iSCSI in the lab: Debian's userspace target ``tgtd`` with one target, a file-backed LUN and CHAP.

QEMU reaches the LUN with libiscsi (``<disk type='network'><source protocol='iscsi' name='<iqn>/<lun>'>``)
and CHAP through a libvirt secret (``<auth username=...><secret type='iscsi' usage=...>``): no kernel
initiator is needed.

Facts (tgt 1.0.85, Debian 12):
- The portal is ``127.0.0.1:13260`` (not 3260, left to a real target); the management socket is
  ``/var/run/tgtd/socket.<control port>``, and ``tgtadm -C <control port>`` talks to it. The lab uses the
  portal's port as the control port, so ``tgtadm -C 13260 --lld iscsi --op show --mode target`` shows it.
- tgtd **ignores SIGTERM** (with or without targets). It stops with ``tgtadm --op delete --mode system``,
  which is refused ("invalid request") while targets exist, so targets are deleted (``--force``) first.
  It leaves its socket files behind; ``down()`` removes them.
- tgtd keeps its configuration in memory only: every start configures the target again.
- ``tgtadm`` takes the CHAP password only on its command line (so does ``tgt-admin``, which runs
  ``tgtadm``): for the fraction of a second tgtadm runs, root can read it in /proc. The password file
  itself is mode 0600 and never printed.
- "RDMA" and "oom_score_adj" warnings in the log are harmless.

Layout: ``<dir>/lun1.img`` (sparse), ``<dir>/chap-password`` (0600, kept across restarts),
``<dir>/tgtd.pid``, ``<dir>/log/tgtd.log``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import string
from pathlib import Path

from controller.dev.lab.storage import procs
from controller.dev.lab.storage.model import IscsiServer, StorageError

ADDRESS = "127.0.0.1"
PORT = 13260
CONTROL_PORT = PORT
IQN = "iqn.2024-01.io.virtplane:lab"
TID = 1
LUN = 1
LUN_SIZE = 256 * 1024 * 1024
CHAP_USER = "vplab"
SECRET_USAGE = "virtplane-lab-iscsi"
PASSWORD_LENGTH = 16  # 12-16 characters suit every initiator (Windows requires that range)


def write_secret(path: Path) -> None:
    """Create ``path`` (mode 0600) with a new random CHAP password unless it exists."""
    if path.exists():
        return
    alphabet = string.ascii_letters + string.digits
    password = "".join(secrets.choice(alphabet) for _ in range(PASSWORD_LENGTH))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password)


class IscsiBackend:
    kind = "iscsi"

    def __init__(self, directory: Path, start_timeout: float) -> None:
        self.dir = directory
        self.timeout = start_timeout
        self.lun_file = directory / "lun1.img"
        self.secret_file = directory / "chap-password"
        self.pidfile = directory / "tgtd.pid"
        self.logs = directory / "log"
        self.control_socket = Path(f"/var/run/tgtd/socket.{CONTROL_PORT}")
        self.owner = procs.Owner("tgtd", marks=(str(self.pidfile),))

    def _tgtd(self) -> int | None:
        pid = procs.read_pid(self.pidfile)
        return pid if self.owner.owns(pid) else None

    def tgtadm(self, *args: str, check: bool = True) -> str:
        """Run ``tgtadm -C <control port> <args>``; return its stdout."""
        return procs.run(["tgtadm", "-C", str(CONTROL_PORT), *args], timeout=30, check=check).stdout

    def status(self) -> IscsiServer:
        pid = self._tgtd()
        return IscsiServer(
            kind="iscsi",
            running=pid is not None and self._configured(),
            portal=f"{ADDRESS}:{PORT}",
            iqn=IQN,
            lun=LUN,
            lun_file=self.lun_file,
            lun_size=LUN_SIZE,
            chap_user=CHAP_USER,
            secret_file=self.secret_file,
            secret_usage=SECRET_USAGE,
            control_port=CONTROL_PORT,
            tgtd_pid=pid,
            dir=self.dir,
        )

    def _configured(self) -> bool:
        shown = self.tgtadm("--lld", "iscsi", "--op", "show", "--mode", "target", check=False)
        return f"Target {TID}: {IQN}" in shown and re.search(rf"LUN: {LUN}\n", shown) is not None and (
            re.search(rf"Account information:\s*\n\s*{CHAP_USER}\n", shown) is not None
        )

    def up(self) -> IscsiServer:
        for tool in ("tgtd", "tgtadm"):
            if shutil.which(tool) is None:
                raise StorageError(f"iscsi: {tool} is not installed (Debian: tgt)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        write_secret(self.secret_file)
        if not self.lun_file.exists():
            with self.lun_file.open("wb") as lun:
                lun.truncate(LUN_SIZE)
        pid = self._tgtd() or self._start()
        if not self._configured():
            self._configure()
        procs.wait_until("iscsi: target configured", self._configured, self.timeout, pid=pid)
        return self.status()

    def _start(self) -> int:
        if procs.tcp_listening(PORT):
            raise StorageError(f"iscsi: port {PORT} is in use by a process the lab did not start")
        log = self.logs / "tgtd.log"
        pid = procs.spawn(
            ["tgtd", "-f", "-C", str(CONTROL_PORT), "--iscsi", f"portal={ADDRESS}:{PORT}", "-p", str(self.pidfile)],
            log,
            self.pidfile,
        )
        procs.wait_until(
            f"iscsi: tgtd on {ADDRESS}:{PORT}",
            lambda: procs.tcp_listening(PORT)
            and self.tgtadm("--op", "show", "--mode", "sys", check=False).startswith("System:"),
            self.timeout,
            pid=pid,
            log=log,
        )
        return pid

    def _configure(self) -> None:
        iscsi = ("--lld", "iscsi")
        self.tgtadm(*iscsi, "--op", "delete", "--mode", "target", "--tid", str(TID), "--force", check=False)
        self.tgtadm(*iscsi, "--op", "new", "--mode", "target", "--tid", str(TID), "-T", IQN)
        self.tgtadm(*iscsi, "--op", "new", "--mode", "logicalunit", "--tid", str(TID), "--lun", str(LUN),
                    "-b", str(self.lun_file))  # fmt: skip
        accounts = self.tgtadm(*iscsi, "--op", "show", "--mode", "account")
        if CHAP_USER not in accounts.split():
            password = self.secret_file.read_text()
            try:
                self.tgtadm(*iscsi, "--op", "new", "--mode", "account", "--user", CHAP_USER, "--password", password)
            except StorageError as err:  # never let the password reach a message
                raise StorageError(str(err).replace(password, "<password>")) from None
        self.tgtadm(*iscsi, "--op", "bind", "--mode", "account", "--tid", str(TID), "--user", CHAP_USER)
        self.tgtadm(*iscsi, "--op", "bind", "--mode", "target", "--tid", str(TID), "-I", ADDRESS)

    def down(self, timeout: float = 20.0) -> None:
        recorded = procs.read_pid(self.pidfile)
        pid = self._tgtd()
        if pid is not None:
            self.tgtadm("--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", str(TID), "--force",
                        check=False)  # fmt: skip
            self.tgtadm("--op", "delete", "--mode", "system", check=False)
            if procs.wait_gone([pid], timeout):
                procs.kill([pid], self.owner)
        if recorded is not None and self._tgtd() is None:  # ours and gone: its socket files too
            for leftover in (self.control_socket, self.control_socket.with_name(self.control_socket.name + ".lock")):
                leftover.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # tgtd made it; another tgtd may still use it
                self.control_socket.parent.rmdir()
            self.pidfile.unlink(missing_ok=True)
