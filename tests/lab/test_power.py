"""Power agents against real parts: the lab's power switch, fence_ipmilan (Debian fence-agents) against
OpenIPMI's ipmi_sim whose chassis power is a lab host, and libvirt's lock manager (virtlockd) on lab
hosts. Tests marked ``lab`` need root and the lab packages (see conftest); the others run anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from controller.adapters.power import (
    AgentAuthFailed,
    AgentMissing,
    AgentTimeout,
    AgentUnreachable,
    ErrorKind,
    FenceDevice,
    IpmiLanAgent,
    LabAgent,
    PowerAction,
    PowerConfigError,
    PowerError,
    PowerState,
    RedfishAgent,
    SecretError,
    SecretRef,
    SshAgent,
    SshTarget,
    fence,
)
from controller.adapters.power.fence_agents import IPMITOOL_SHIM
from controller.adapters.secrets import redact
from controller.dev.lab.bmc import BmcUser, LabBmc
from controller.dev.lab.guest import GuestImage
from controller.dev.lab.hosts import Lab
from tests.e2e.helpers import virsh, wait_for
from tests.lab.conftest import QEMU_CAPS, _bring_down
from tests.lab.test_lab_hosts import guest_xml
from tests.threadrun import run_in_thread

PASSWORD = "Pw-0f-the-BMC-7391"  # distinctive, so a leak anywhere is found by a plain search
WRONG = "Not-the-password-5512"
BMC_USER = "fenceadmin"
HAVE_FENCE_TOOLS = all(shutil.which(t, path="/usr/sbin:/usr/bin") for t in ("fence_ipmilan", "ipmitool", "ipmi_sim"))
needs_fence_tools = pytest.mark.skipif(
    not HAVE_FENCE_TOOLS, reason="needs fence-agents, ipmitool and openipmi (scripts/setup installs them)"
)


run = run_in_thread


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_secret(directory: Path, name: str, value: str) -> SecretRef:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return SecretRef(name, directory)


def gone(pid: int | None) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    assert pid is not None
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def libvirtd_answers(uri: str) -> bool:
    proc = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


# -- pure: secrets, redaction, the ipmitool wrapper ---------------------------------------------------


def test_secret_ref_reads_first_line_and_never_shows_it(tmp_path: Path) -> None:
    ref = write_secret(tmp_path / "secrets", "bmc1", PASSWORD)
    secret = ref.read()
    assert secret.reveal() == PASSWORD
    assert PASSWORD not in repr(secret) and PASSWORD not in str(secret) and PASSWORD not in repr(ref)
    assert redact(f"login {PASSWORD} failed", secret) == "login *** failed"


def test_secret_ref_refuses_escapes_and_loose_modes(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    write_secret(secrets, "ok", PASSWORD)
    outside = tmp_path / "outside"
    outside.write_text(PASSWORD)
    outside.chmod(0o600)
    (secrets / "link").symlink_to(outside)
    for name in ("../outside", "a/b", ".hidden", "link", "missing"):
        with pytest.raises(SecretError) as err:
            SecretRef(name, secrets).read()
        assert PASSWORD not in str(err.value)
    (secrets / "ok").chmod(0o640)
    with pytest.raises(SecretError, match="chmod 600"):
        SecretRef("ok", secrets).read()


def test_ipmitool_wrapper_replaces_the_password_flag_by_a_file(tmp_path: Path) -> None:
    """fence_ipmilan runs `<ipmitool_path> ... -P '' ...`; the wrapper execs ipmitool with `-f <file>`."""
    fake = tmp_path / "show-args"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "VIRTPLANE_IPMI_PASSWORD_FILE": "/etc/x/pw", "VIRTPLANE_IPMITOOL": str(fake)}
    out = subprocess.run(
        [str(IPMITOOL_SHIM), "-I", "lanplus", "-U", "a b", "-P", "", "-C", "3", "chassis", "power", "status"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert out == "[-I][lanplus][-U][a b][-f][/etc/x/pw][-C][3][chassis][power][status]"
    missing = subprocess.run([str(IPMITOOL_SHIM), "-P", ""], env={"PATH": os.environ["PATH"]}, capture_output=True,
                             text=True, check=False)
    assert missing.returncode != 0 and "VIRTPLANE_IPMI_PASSWORD_FILE" in missing.stderr


def test_missing_agent_program_is_typed(tmp_path: Path) -> None:
    agent = IpmiLanAgent(FenceDevice("127.0.0.1", "u"), program_path=str(tmp_path / "fence_ipmilan"))
    with pytest.raises(AgentMissing) as err:
        run(agent.status)
    assert err.value.result.error is ErrorKind.AGENT_MISSING and not err.value.result.ok


def test_unknown_agent_option_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown options"):
        IpmiLanAgent(FenceDevice("127.0.0.1", "u", options={"ipmitool_path": "/tmp/evil"}))


# -- lab: the lab agent ------------------------------------------------------------------------------


@pytest.mark.lab
def test_lab_agent_powers_a_lab_host_off_and_on(lab: Lab) -> None:
    agent = LabAgent(lab.dir, "lab-2", qemu_caps_dir=QEMU_CAPS)
    host = lab.host("lab-2")
    assert run(agent.status).state is PowerState.ON
    off = run(agent.off)
    assert off.ok and off.action is PowerAction.OFF
    assert gone(host.pid)
    assert not libvirtd_answers(host.uri)
    assert run(agent.status).state is PowerState.OFF
    assert run(agent.on).ok
    assert libvirtd_answers(host.uri)
    assert run(agent.status).state is PowerState.ON


@pytest.mark.lab
def test_fence_through_the_lab_agent_records_every_attempt(lab: Lab) -> None:
    report = run(fence, LabAgent(lab.dir, "lab-2", qemu_caps_dir=QEMU_CAPS))
    try:
        assert report.ok and report.state is PowerState.OFF
        assert [(a.action, a.state) for a in report.attempts] == [
            (PowerAction.STATUS, PowerState.ON), (PowerAction.OFF, PowerState.OFF),
            (PowerAction.STATUS, PowerState.OFF),
        ]
        print(f"\nlab fence: {report.duration_s:.3f} s; " + json.dumps(report.to_status()))
    finally:
        lab.power_on("lab-2")


# -- lab: fence_ipmilan against ipmi_sim --------------------------------------------------------------


@pytest.fixture(scope="module")
def bmc(lab: Lab) -> Iterator[LabBmc]:
    if not HAVE_FENCE_TOOLS:
        pytest.skip("needs fence-agents, ipmitool and openipmi")
    the_bmc = LabBmc(lab, "lab-1", port=free_udp_port(), users=[BmcUser(BMC_USER, PASSWORD)])
    the_bmc.start()
    try:
        yield the_bmc
    finally:
        the_bmc.stop()
        assert the_bmc.pid() is None


def ipmi_agent(bmc: LabBmc, secret: SecretRef, **device: object) -> IpmiLanAgent:
    settings: dict[str, object] = {"options": {"lanplus": "1", "cipher": "3"}, "timeout": 30.0, "port": bmc.port}
    settings.update(device)
    return IpmiLanAgent(FenceDevice(bmc.address, BMC_USER, secret, **settings))  # type: ignore[arg-type]


@pytest.mark.lab
@needs_fence_tools
def test_fence_ipmilan_powers_the_lab_host_off_and_on(lab: Lab, bmc: LabBmc, tmp_path: Path) -> None:
    agent = ipmi_agent(bmc, write_secret(tmp_path / "secrets", "bmc-lab-1", PASSWORD))
    host = lab.host("lab-1")
    status = run(agent.status)
    assert status.ok and status.state is PowerState.ON, status
    off = run(agent.off)
    assert off.ok and off.state is PowerState.OFF, off
    assert gone(host.pid), "libvirtd of lab-1 still runs"
    assert not lab.host("lab-1").running and not libvirtd_answers(host.uri)
    assert run(agent.status).state is PowerState.OFF
    on = run(agent.on)
    assert on.ok and lab.host("lab-1").running and libvirtd_answers(host.uri)
    print(f"\nipmilan: status {status.duration_s:.2f} s, off {off.duration_s:.2f} s, on {on.duration_s:.2f} s")


@pytest.mark.lab
@needs_fence_tools
def test_fence_ipmilan_escalation_status_off_verify(lab: Lab, bmc: LabBmc, tmp_path: Path) -> None:
    agent = ipmi_agent(bmc, write_secret(tmp_path / "secrets", "bmc-lab-1", PASSWORD))
    started = time.monotonic()
    report = run(fence, agent)
    try:
        assert report.ok, report
        assert [a.action for a in report.attempts][:2] == [PowerAction.STATUS, PowerAction.OFF]
        assert report.attempts[-1].state is PowerState.OFF and not lab.host("lab-1").running
        print(f"\nipmilan fence of lab-1: {time.monotonic() - started:.2f} s: "
              + ", ".join(f"{a.action.value} {a.state.value} {a.duration_s:.2f}s" for a in report.attempts))
    finally:
        lab.power_on("lab-1")


@pytest.mark.lab
@needs_fence_tools
def test_wrong_password_is_an_auth_error_without_the_password(lab: Lab, bmc: LabBmc, tmp_path: Path) -> None:
    agent = ipmi_agent(bmc, write_secret(tmp_path / "secrets", "bmc-lab-1", WRONG))
    started = time.monotonic()
    with pytest.raises(AgentAuthFailed) as err:
        run(agent.status)
    assert time.monotonic() - started < 15
    report = run(fence, agent)
    assert not report.ok and [a.error for a in report.attempts] == [ErrorKind.AUTH_FAILED]
    assert lab.host("lab-1").running, "a refused login must not power anything off"
    text = str(err.value) + repr(err.value.result) + json.dumps(report.to_status())
    assert WRONG not in text and PASSWORD not in text


@pytest.mark.lab
@needs_fence_tools
def test_unreachable_bmc_is_typed_within_a_bound(bmc: LabBmc, tmp_path: Path) -> None:
    secret = write_secret(tmp_path / "secrets", "bmc-x", PASSWORD)
    nobody = free_udp_port()
    agent = ipmi_agent(bmc, secret, port=nobody, power_timeout=4)
    started = time.monotonic()
    with pytest.raises(AgentUnreachable) as err:
        run(agent.status)
    took = time.monotonic() - started
    assert took < 4 + 3 + 3, f"unreachable took {took:.1f} s"
    assert err.value.result.error is ErrorKind.UNREACHABLE
    # Our own deadline shorter than the agent's: killed, typed as a timeout.
    agent = ipmi_agent(bmc, secret, port=nobody, timeout=1.5)
    started = time.monotonic()
    with pytest.raises(AgentTimeout):
        run(agent.status)
    assert time.monotonic() - started < 3
    print(f"\nunreachable: {took:.2f} s (power_timeout 4 s + RMCP ping 3 s)")


class CmdlineWatch:
    """Scans every process's command line, as fast as it can, for a string."""

    def __init__(self, needle: str) -> None:
        self.needle = needle.encode()
        self.hits: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scans += 1
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        args = f.read()
                except OSError:
                    continue
                if self.needle in args:
                    self.hits.append(args.replace(b"\0", b" ").decode(errors="replace"))

    def __enter__(self) -> CmdlineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.lab
@needs_fence_tools
def test_password_is_never_on_a_command_line_nor_in_results(
    lab: Lab, bmc: LabBmc, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = ipmi_agent(bmc, write_secret(tmp_path / "secrets", "bmc-lab-1", PASSWORD))
    results = []
    with CmdlineWatch(PASSWORD) as watch:
        for _ in range(10):
            results.append(run(agent.status))
        results.append(run(agent.off))
        results.append(run(agent.on))
    assert watch.scans > 100, f"the watcher scanned only {watch.scans} times"
    assert watch.hits == [], f"password seen in a command line: {watch.hits[:2]}"
    assert all(r.ok for r in results)
    text = " ".join(repr(r) + json.dumps(r.to_status()) for r in results) + caplog.text
    assert PASSWORD not in text
    print(f"\n/proc scans while fencing: {watch.scans}, password seen: {len(watch.hits)}")


@pytest.mark.lab
def test_lab_bmc_config_is_private(bmc: LabBmc) -> None:
    assert bmc.lan_conf.stat().st_mode & 0o077 == 0


def test_config_error_is_typed(tmp_path: Path) -> None:
    agent = IpmiLanAgent(FenceDevice("127.0.0.1", "u", SecretRef("absent", tmp_path)), program_path="/bin/true")
    with pytest.raises(PowerConfigError) as err:
        run(agent.status)
    assert isinstance(err.value, PowerError) and err.value.result.error is ErrorKind.CONFIG


# -- lab: virtlockd -----------------------------------------------------------------------------------


@pytest.fixture
def locked_lab(lab_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two lab hosts with virtlockd and ``lock_manager = "lockd"``; brought down afterwards."""
    the_lab = Lab(tmp_path_factory.mktemp("locklab"), qemu_caps_dir=QEMU_CAPS, lock_manager=True)
    try:
        the_lab.up(2)
        yield the_lab
    finally:
        recorded = [h.virtlockd_pid for h in the_lab.status() if h.virtlockd_pid]
        _bring_down(the_lab)
        assert all(gone(p) for p in recorded), "virtlockd survived down()"


def define(lab: Lab, host: str, name: str, image: GuestImage, accel: str, disk: Path) -> libvirt.virDomain:
    conn = libvirt.open(lab.host(host).uri)
    return conn.defineXML(guest_xml(name, image, accel, disk, lab.shared_dir / f"{name}.serial.log"))


def per_host_image(lab: Lab, host: str) -> Path:
    """The same path on every host, a different file on each: /var/lib/libvirt is per-host in the lab."""
    real = lab.host(host).dir / "lib" / "images" / "same-path.qcow2"
    real.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(real), "64M"], check=True)
    return Path("/var/lib/libvirt/images/same-path.qcow2")


def lease_holders(lab: Lab) -> dict[str, int]:
    """Lease file name -> pid holding a POSIX lock on it (from /proc/locks)."""
    inodes = {os.stat(f).st_ino: f.name for f in lab.lockspace_dir.iterdir()}
    held = {}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "POSIX":
            inode = int(fields[5].rsplit(":", 1)[1])
            if inode in inodes:
                held[inodes[inode]] = int(fields[4])
    return held


@pytest.mark.lab
def test_virtlockd_refuses_a_disk_leased_by_another_host(locked_lab: Lab, guest_image: GuestImage, accel: str) -> None:
    """Same disk path on two hosts, different files (so QEMU's own image lock cannot be what refuses):
    virtlockd of lab-2 refuses the lease lab-1's virtlockd holds; after lab-1 loses power, it is free."""
    a = define(locked_lab, "lab-1", "lease-a", guest_image, accel, per_host_image(locked_lab, "lab-1"))
    b = define(locked_lab, "lab-2", "lease-b", guest_image, accel, per_host_image(locked_lab, "lab-2"))
    libvirt.registerErrorHandler(lambda *_: None, None)
    a.create()
    lab1 = locked_lab.host("lab-1")
    holders = lease_holders(locked_lab)
    assert list(holders.values()) == [lab1.virtlockd_pid], holders
    started = time.monotonic()
    with pytest.raises(libvirt.libvirtError) as err:
        b.create()
    refused_after = time.monotonic() - started
    assert err.value.get_error_domain() == libvirt.VIR_FROM_LOCKSPACE
    assert err.value.get_error_code() == libvirt.VIR_ERR_RESOURCE_BUSY
    assert locked_lab.host("lab-2").qemu_pids == () and not b.isActive()
    print(f"\nrefused by virtlockd after {refused_after:.2f} s: {err.value.get_error_message()}")

    locked_lab.power_off("lab-1")  # SIGKILL of libvirtd, QEMU and virtlockd: the kernel drops the lock
    assert lease_holders(locked_lab) == {}
    b.create()
    assert b.isActive()
    assert list(lease_holders(locked_lab).values()) == [locked_lab.host("lab-2").virtlockd_pid]


@pytest.mark.lab
def test_same_image_on_two_hosts_is_refused_by_qemu_before_virtlockd(
    locked_lab: Lab, guest_image: GuestImage, accel: str
) -> None:
    """One image file, one kernel: QEMU's own write lock refuses first, because libvirt acquires the
    disk leases only when it resumes the CPUs of the (paused) new QEMU, after QEMU opened its images."""
    disk = locked_lab.shared_dir / "shared.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    a = define(locked_lab, "lab-1", "img-a", guest_image, accel, disk)
    b = define(locked_lab, "lab-2", "img-b", guest_image, accel, disk)
    libvirt.registerErrorHandler(lambda *_: None, None)
    a.create()
    with pytest.raises(libvirt.libvirtError) as err:
        b.create()
    assert err.value.get_error_domain() == libvirt.VIR_FROM_QEMU
    assert 'Failed to get "write" lock' in (err.value.get_error_message() or "")
    assert not b.isActive() and a.isActive()


@pytest.mark.lab
def test_without_the_lock_manager_the_same_disk_path_starts_twice(
    lab: Lab, guest_image: GuestImage, accel: str
) -> None:
    """The control for the virtlockd test: no lock manager, the same setup starts on both hosts."""
    assert not lab.lock_manager
    domains = [
        define(lab, host, f"nolease-{host}", guest_image, accel, per_host_image(lab, host))
        for host in ("lab-1", "lab-2")
    ]
    try:
        for dom in domains:
            dom.create()
        assert all(dom.isActive() for dom in domains)
    finally:
        for dom in domains:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        wait_for("QEMUs gone", lambda: not any(lab.host(h).qemu_pids for h in ("lab-1", "lab-2")), 30)
    assert virsh(lab.host("lab-1").uri, "list", "--name").strip() == ""


# -- lab: fence_redfish against sushy-tools' Redfish emulator (optional: not a Debian package) --------

SUSHY = (
    os.environ.get("VIRTPLANE_SUSHY_EMULATOR")
    or shutil.which("sushy-emulator", path=str(Path(__file__).resolve().parents[2] / ".venv-sushy" / "bin"))
    or shutil.which("sushy-emulator")
)
RF_USER = "rfadmin"


@pytest.fixture
def redfish_node(
    lab: Lab, guest_image: GuestImage, accel: str, tmp_path: Path
) -> Iterator[tuple[int, libvirt.virDomain]]:
    """sushy-emulator (libvirt driver, HTTPS, basic auth) in front of lab-2; its System is a lab guest.
    scripts/setup installs sushy-tools in .venv-sushy/ (set VIRTPLANE_SUSHY_EMULATOR to use another)."""
    if SUSHY is None or not HAVE_FENCE_TOOLS:
        pytest.fail("needs sushy-emulator and fence-agents: run scripts/setup")
    # sushy-emulator checks an htpasswd file with bcrypt hashes; hash with the emulator's own Python.
    emulator_python = Path(SUSHY).parent / "python"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    hashed = subprocess.run(
        [str(emulator_python), "-c", "import bcrypt, sys; print(bcrypt.hashpw(sys.stdin.read().encode(), "
         "bcrypt.gensalt(rounds=4)).decode())"], input=PASSWORD, capture_output=True, text=True, check=True,
    ).stdout.strip()
    (tmp_path / "htpasswd").write_text(f"{RF_USER}:{hashed}\n")
    port = free_tcp_port()
    (tmp_path / "emu.conf").write_text(
        f"SUSHY_EMULATOR_AUTH_FILE = '{tmp_path / 'htpasswd'}'\nSUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
        f"SUSHY_EMULATOR_LISTEN_PORT = {port}\nSUSHY_EMULATOR_SSL_CERT = '{tmp_path / 'cert.pem'}'\n"
        f"SUSHY_EMULATOR_SSL_KEY = '{tmp_path / 'key.pem'}'\n"
    )
    disk = lab.shared_dir / "rf-node.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    dom = define(lab, "lab-2", "rf-node", guest_image, accel, disk)
    with (tmp_path / "emu.log").open("ab") as log:
        emulator = subprocess.Popen(
            [SUSHY, "--config", str(tmp_path / "emu.conf"), "--libvirt-uri", lab.host("lab-2").uri],
            stdout=log, stderr=log,
        )
    try:
        url = f"https://127.0.0.1:{port}/redfish/v1/"
        wait_for("sushy-emulator listening",
                 lambda: subprocess.run(["curl", "-sk", "-o", "/dev/null", url], check=False).returncode == 0, 30)
        yield port, dom
    finally:
        emulator.terminate()
        emulator.wait(10)
        if dom.isActive():
            dom.destroy()
        dom.undefine()


@pytest.mark.lab
def test_fence_redfish_against_the_sushy_emulator(
    redfish_node: tuple[int, libvirt.virDomain], tmp_path: Path
) -> None:
    port, dom = redfish_node
    secrets = tmp_path / "secrets"
    good = RedfishAgent(FenceDevice("127.0.0.1", RF_USER, write_secret(secrets, "rf", PASSWORD), port,
                                    {"ssl_insecure": "1"}))
    with CmdlineWatch(PASSWORD) as watch:
        assert run(good.status).state is PowerState.OFF
        assert run(good.on).ok and dom.isActive()
        report = run(fence, good)
    assert watch.hits == [] and watch.scans > 10
    assert report.ok and not dom.isActive(), report
    print(f"\nredfish fence: {report.duration_s:.2f} s: "
          + ", ".join(f"{a.action.value} {a.state.value} {a.duration_s:.2f}s" for a in report.attempts))
    bad = RedfishAgent(FenceDevice("127.0.0.1", RF_USER, write_secret(secrets, "rf-bad", WRONG), port,
                                   {"ssl_insecure": "1"}))
    with pytest.raises(AgentAuthFailed) as err:
        run(bad.status)
    assert WRONG not in str(err.value) and PASSWORD not in str(err.value)
    closed = RedfishAgent(FenceDevice("127.0.0.1", RF_USER, write_secret(secrets, "rf", PASSWORD), free_tcp_port(),
                                      {"ssl_insecure": "1"}))
    with pytest.raises(AgentUnreachable):
        run(closed.status)


# -- lab: the ssh agent against a private sshd that is part of lab-2 ----------------------------------

# Never "poweroff": if the forced command below were ever bypassed, this runs on the machine itself.
LAB_POWEROFF = ("virtplane-lab-poweroff-test",)


@pytest.fixture
def ssh_host(lab: Lab, tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    """An sshd on 127.0.0.1 that stands for lab-2's OS: its forced command turns the agent's power-off
    command into the lab's power-off of lab-2, then stops the sshd (a powered-off host answers nothing).
    Yields (port, key dir with the client key ``id``, known_hosts)."""
    sshd = shutil.which("sshd", path="/usr/sbin:/usr/bin")
    if sshd is None or shutil.which("ssh") is None:
        pytest.fail("needs openssh-server and openssh-client: run scripts/setup")
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    for key in ("id", "other", "hostkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key)], check=True)
    port = free_tcp_port()
    known_hosts = keys / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {(keys / 'hostkey.pub').read_text()}")
    (tmp_path / "authorized_keys").write_text((keys / "id.pub").read_text())
    pidfile = tmp_path / "sshd.pid"
    forced = tmp_path / "forced-command"
    forced.write_text(
        "#!/bin/sh\n"
        'case "$SSH_ORIGINAL_COMMAND" in\n'
        "  true) exit 0 ;;\n"
        f"  {' '.join(LAB_POWEROFF)})\n"
        f"    {sys.executable} -m controller.dev.lab.bmc {lab.dir} lab-2 "
        f"--qemu-caps-dir {lab.qemu_caps_dir} set power 0 >/dev/null\n"
        f'    kill -TERM "$(cat {pidfile})"; exit 0 ;;\n'
        '  *) echo "refused: $SSH_ORIGINAL_COMMAND" >&2; exit 126 ;;\n'
        "esac\n"
    )
    forced.chmod(0o755)
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'hostkey'}\nPidFile {pidfile}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nStrictModes no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        f"ForceCommand {forced}\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    subprocess.run([sshd, "-t", "-f", str(config)], check=True)
    with (tmp_path / "sshd.log").open("wb") as log:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for("sshd listening", lambda: socket_answers(port), 10)
        yield port, keys, known_hosts
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
        lab.power_on("lab-2")


def socket_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.lab
def test_ssh_agent_powers_off_and_sees_the_host_gone(lab: Lab, ssh_host: tuple[int, Path, Path]) -> None:
    port, keys, known_hosts = ssh_host

    def target(key: str, key_dir: Path = keys) -> SshTarget:
        return SshTarget("127.0.0.1", keys / key, known_hosts, port=port, key_dir=key_dir,
                         poweroff_command=LAB_POWEROFF, off_deadline=10)

    with pytest.raises(AgentAuthFailed):
        run(SshAgent(target("other")).status)
    with pytest.raises(PowerConfigError):
        run(SshAgent(target("id", key_dir=keys / "elsewhere")).status)
    agent = SshAgent(target("id"))
    with pytest.raises(PowerConfigError):
        run(agent.on)
    report = run(fence, agent)
    assert report.ok, report
    assert [(a.action, a.state) for a in report.attempts] == [
        (PowerAction.STATUS, PowerState.ON), (PowerAction.OFF, PowerState.OFF), (PowerAction.STATUS, PowerState.OFF),
    ]
    assert not lab.host("lab-2").running and not socket_answers(port)
    print(f"\nssh fence: {report.duration_s:.2f} s: "
          + ", ".join(f"{a.action.value} {a.state.value} {a.duration_s:.2f}s" for a in report.attempts))


@pytest.mark.lab
def test_a_paused_domain_holds_no_lease_and_cannot_resume_onto_a_leased_disk(
    locked_lab: Lab, guest_image: GuestImage, accel: str
) -> None:
    """libvirt acquires disk leases when CPUs start, not when QEMU starts: a domain started paused
    (like the destination of a migration) holds none; its resume is what virtlockd refuses."""
    a = define(locked_lab, "lab-1", "paused-a", guest_image, accel, per_host_image(locked_lab, "lab-1"))
    b = define(locked_lab, "lab-2", "paused-b", guest_image, accel, per_host_image(locked_lab, "lab-2"))
    libvirt.registerErrorHandler(lambda *_: None, None)
    a.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    assert lease_holders(locked_lab) == {}
    b.create()  # not refused: nothing holds the lease yet
    with pytest.raises(libvirt.libvirtError) as err:
        a.resume()
    assert (err.value.get_error_domain(), err.value.get_error_code()) == (
        libvirt.VIR_FROM_LOCKSPACE, libvirt.VIR_ERR_RESOURCE_BUSY,
    )
    assert a.state()[0] == libvirt.VIR_DOMAIN_PAUSED and b.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_lab_lock_manager_configuration() -> None:
    from controller.dev.lab.hosts import render_qemu_conf, render_qemu_lockd_conf

    assert 'lock_manager = "lockd"' not in render_qemu_conf(1)
    assert 'lock_manager = "lockd"' in render_qemu_conf(1, lock_manager=True)
    conf = render_qemu_lockd_conf(Path("/lab/lockspace"))
    assert 'file_lockspace_dir = "/lab/lockspace"' in conf and "require_lease_for_disks = 1" in conf
