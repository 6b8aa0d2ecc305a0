"""An IPMI BMC for a lab host: OpenIPMI's ``ipmi_sim`` whose chassis power is the lab's power switch.

``ipmi_sim`` (Debian package ``openipmi``) answers IPMI 1.5 and 2.0 (RMCP+) over UDP. Its lan.conf
option ``chassis_control "<program>"`` makes it run, for every Get Chassis Status and Chassis Control,
``<program> get power`` (it expects ``power:1`` or ``power:0`` on stdout) and ``<program> set power 0|1``
(or ``set reset 1``); a non-zero exit becomes an IPMI error. The program here is this module::

    python -m controller.dev.lab.bmc <lab dir> <host> [--qemu-caps-dir D] get power | set power 0|1

so ``fence_ipmilan -o off`` against the simulator really SIGKILLs the lab host (``Lab.power_off``).

Files, under ``<lab dir>/bmc/<host>/``: ``lan.conf`` (0600: it holds the BMC's user and password, as a
real BMC's configuration does), ``bmc.emu`` (the emulated management controller), ``state/``
(ipmi_sim's persistent data), ``ipmi_sim.log``, ``ipmi_sim.pid``.

Findings (openipmi 2.0.33, ipmitool 1.8.19): ipmi_sim does not implement Get Channel Cipher Suites,
so ipmitool's ``-I lanplus`` without ``-C`` retries for ~10 s before falling back; pass a cipher
suite (``cipher=3``: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) and it answers in ~60 ms.
ipmi_sim calls the chassis program synchronously (popen), so the BMC is busy while a lab host
powers off/on (~0.05-0.2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from controller.dev.lab.hosts import Lab, LabError, _alive, _cmdline, _read_pid

EMU = """# virtplane lab BMC: one management controller (the BMC) at IPMB address 0x20
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
"""


@dataclass(frozen=True)
class BmcUser:
    name: str
    password: str
    privilege: str = "admin"


def render_lan_conf(name: str, address: str, port: int, chassis_program: str, users: list[BmcUser]) -> str:
    for text in (name, chassis_program, *(u.name for u in users), *(u.password for u in users)):
        if '"' in text or "\n" in text:
            raise LabError(f"BMC settings must not contain quotes or newlines: {text!r}")
    lines = [
        "# written by virtplane lab",
        f'name "{name}"',
        "set_working_mc 0x20",
        "  startlan 1",
        f"    addr {address} {port}",
        "    priv_limit admin",
        *(f"    allowed_auths_{level} md5 straight" for level in ("callback", "user", "operator", "admin")),
        "    guid a123456789abcdefa123456789abcdef",
        "  endlan",
        f'  chassis_control "{chassis_program}"',
    ]
    for number, user in enumerate(users, start=2):
        lines.append(f'  user {number} true "{user.name}" "{user.password}" {user.privilege} 10 md5 straight')
    return "\n".join(lines) + "\n"


class LabBmc:
    """The simulated BMC of one lab host. ``start()`` runs ipmi_sim; ``stop()`` stops it by its pid."""

    def __init__(
        self,
        lab: Lab,
        host: str,
        *,
        port: int,
        users: list[BmcUser],
        address: str = "127.0.0.1",
    ) -> None:
        self.lab = lab
        self.host = host
        self.address = address
        self.port = port
        self.users = users
        self.dir = lab.dir / "bmc" / host
        self.pidfile = self.dir / "ipmi_sim.pid"
        self.lan_conf = self.dir / "lan.conf"
        self._proc: subprocess.Popen[bytes] | None = None

    def chassis_program(self) -> str:
        parts = [sys.executable, "-m", "controller.dev.lab.bmc", str(self.lab.dir), self.host]
        parts += ["--qemu-caps-dir", str(self.lab.qemu_caps_dir)]
        return " ".join(parts)

    def pid(self) -> int | None:
        pid = _read_pid(self.pidfile)
        if pid is None or not _alive(pid):
            return None
        args = _cmdline(pid)
        if not args or not args[0].endswith("ipmi_sim") or str(self.lan_conf) not in args:
            return None
        return pid

    def start(self, timeout: float = 10.0) -> int:
        """Start ipmi_sim unless it runs; return its pid once it answers an RMCP presence ping."""
        running = self.pid()
        if running is not None:
            return running
        (self.dir / "state").mkdir(parents=True, exist_ok=True)
        self.lan_conf.touch(mode=0o600)
        self.lan_conf.chmod(0o600)
        self.lan_conf.write_text(
            render_lan_conf(f"lab-bmc-{self.host}", self.address, self.port, self.chassis_program(), self.users)
        )
        (self.dir / "bmc.emu").write_text(EMU)
        with (self.dir / "ipmi_sim.log").open("ab") as log:
            proc = subprocess.Popen(
                ["ipmi_sim", "-c", str(self.lan_conf), "-f", str(self.dir / "bmc.emu"), "-s", str(self.dir / "state"),
                 "-n"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._proc = proc
        self.pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"ipmi_sim for {self.host} exited ({proc.returncode}); see {self.dir / 'ipmi_sim.log'}")
            if _presence_pong(self.address, self.port):
                return proc.pid
            time.sleep(0.05)
        self.stop()
        raise LabError(f"ipmi_sim for {self.host} does not answer on {self.address}:{self.port}")

    def stop(self, timeout: float = 5.0) -> None:
        pid = self.pid()
        if pid is None:
            if self._proc is not None:
                self._proc.wait()
            return
        if self._proc is not None and self._proc.pid == pid:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _alive(pid):
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _presence_pong(address: str, port: int) -> bool:
    import socket

    ping = bytes((0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x01, 0x00, 0x00))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(ping, (address, port))
            data, _ = sock.recvfrom(512)
        except OSError:
            return False
    return len(data) >= 9 and data[8] == 0x40


def chassis_main(argv: list[str] | None = None) -> int:
    """ipmi_sim's chassis_control program: ``get power`` / ``set power 0|1`` / ``set reset 1``."""
    parser = argparse.ArgumentParser(prog="python -m controller.dev.lab.bmc")
    parser.add_argument("lab_dir", type=Path)
    parser.add_argument("host")
    parser.add_argument("--qemu-caps-dir", type=Path)
    parser.add_argument("op", choices=("get", "set", "check"))
    parser.add_argument("params", nargs="*")
    args = parser.parse_args(argv)
    lab = Lab(args.lab_dir, qemu_caps_dir=args.qemu_caps_dir)
    try:
        if args.op == "get":
            for param in args.params:
                if param != "power":
                    print(f"unsupported parameter {param}")
                    return 1
                print(f"power:{1 if lab.host(args.host).running else 0}")
            return 0
        if args.op == "check":
            return 1
        params = list(args.params)
        while params:
            param, value = params.pop(0), (params.pop(0) if params else "")
            value = value.strip('"')
            if param == "power" and value in ("0", "1"):
                if value == "0":
                    lab.power_off(args.host)
                else:
                    lab.power_on(args.host)
            elif param == "reset" and value == "1":
                lab.power_off(args.host)
                lab.power_on(args.host)
            else:
                print(f"unsupported: {param} {value}")
                return 1
        return 0
    except LabError as err:
        print(f"lab: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(chassis_main())
