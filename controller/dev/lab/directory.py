"""A private OpenLDAP server (Debian's slapd) for the lab, the demo and the tests.

``LabDirectory(dir).up()`` is idempotent: the first call sets the directory up, later calls start it if it
is stopped and otherwise just report it. Layout under ``dir``::

    tls/ca.crt ca.key server.crt server.key   a self-signed CA made for this lab and the server's cert
                                              (openssl CLI; SAN DNS:localhost, IP:127.0.0.1)
    secrets/<uid>.password bind.password      generated passwords, mode 0600, no trailing newline
    config.ldif data.ldif                     what slapadd loaded (data.ldif holds only {SSHA} hashes)
    slapd.d/                                  cn=config, built by ``slapadd -n0 -F slapd.d -l config.ldif``
    db/                                       the mdb database, loaded by ``slapadd -n1 -F slapd.d``
    run/slapd.pid run/ldapi                   slapd's pidfile (olcPidFile) and its ldapi socket
    slapd.log                                 slapd's stats log (``-d stats``), appended
    state.json                                ports, chosen once and kept

Why cn=config through slapadd rather than slapd.conf: slapd.conf is deprecated since OpenLDAP 2.4 and
Debian's own slapd runs from slapd.d; generating one LDIF and loading it offline gives the same result as a
slapd.conf (nothing is edited by hand) and lets an administrator change it live over ldapi (root is
manager there through SASL EXTERNAL)::

    ldapmodify -Y EXTERNAL -H ldapi://%2F...%2Frun%2Fldapi ...

slapd listens on loopback only: ``ldap://127.0.0.1:PORT`` (StartTLS; simple binds need TLS, olcSecurity
simple_bind=64) and ``ldaps://127.0.0.1:PORT``. It is started in its own session through ``sh`` (so it is
nobody's child here and outlives ``virtplane lab directory up``), found again through its pidfile, and
stopped by PID only after its command line shows it is this lab's slapd. Readiness is polled with a
deadline: a StartTLS and an ldaps bind as the service account, with our CA, must both work.

Errors::

    LabError     (from controller.dev.lab.hosts) set-up, start or stop failed; the message says where to look
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from controller.adapters.directory import DirectoryConfig, DirectoryUnavailable, Unavailable, check_directory
from controller.dev.lab import directory_ldif as ldif
from controller.dev.lab.hosts import LabError
from controller.dev.lab.paths import DEFAULT_DIRECTORY_DIR
from controller.server.etcd import free_port

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
OPENSSL = "/usr/bin/openssl"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class LabDirectoryUser:
    name: str
    dn: str
    password_file: Path
    groups: frozenset[str]  # every group, nested ones included
    locked: bool

    def password(self) -> str:
        return self.password_file.read_text().strip()


@dataclass(frozen=True)
class LabDirectoryInfo:
    """What ``up`` and ``status`` report: where the directory is and how to log in against it."""

    dir: Path
    url: str  # ldap:// with StartTLS
    ldaps_url: str
    ldapi_url: str  # root's SASL EXTERNAL administration socket
    base_dn: str
    user_base: str
    group_base: str
    bind_dn: str
    bind_password_file: Path
    ca_file: Path
    log_file: Path
    pid: int | None
    users: tuple[LabDirectoryUser, ...]

    @property
    def running(self) -> bool:
        return self.pid is not None

    def user(self, name: str) -> LabDirectoryUser:
        for user in self.users:
            if user.name == name:
                return user
        raise KeyError(name)

    def client_config(self, *, ldaps: bool = False, **overrides: object) -> DirectoryConfig:
        """The server-side ``DirectoryConfig`` for this directory. The lab's slapd computes nested
        memberOf (dynlist), so ``nested_groups`` is ``memberof``; the openldap profile's default is
        ``search``, which works here too."""
        fields: dict[str, object] = {
            "profile": "openldap",
            "urls": (self.ldaps_url if ldaps else self.url,),
            "ca_file": self.ca_file,
            "bind_dn": self.bind_dn,
            "bind_password_file": self.bind_password_file,
            "user_base": self.user_base,
            "group_base": self.group_base,
            "nested_groups": "memberof",
        }
        fields.update(overrides)
        return DirectoryConfig.model_validate(fields)


class LabDirectory:
    def __init__(self, directory: Path = DEFAULT_DIRECTORY_DIR, *, start_timeout: float = 20.0) -> None:
        self.dir = Path(directory).absolute()
        self.start_timeout = start_timeout
        self.tls_dir = self.dir / "tls"
        self.secrets_dir = self.dir / "secrets"
        self.slapd_d = self.dir / "slapd.d"
        self.db_dir = self.dir / "db"
        self.run_dir = self.dir / "run"
        self.pid_file = self.run_dir / "slapd.pid"
        self.socket = self.run_dir / "ldapi"
        self.log_file = self.dir / "slapd.log"
        self.state_file = self.dir / "state.json"
        self.ca_file = self.tls_dir / "ca.crt"
        self.bind_password_file = self.secrets_dir / "bind.password"
        self._started_pid: int | None = None  # the slapd this object started, until its pidfile appears

    # -- public face ---------------------------------------------------------------------------------

    def up(self, *, port: int | None = None, ldaps_port: int | None = None) -> LabDirectoryInfo:
        """Set up (first time), start (if stopped) and wait until ready. Ports are chosen on the first
        call (free ones unless given) and kept; asking for other ports later is an error."""
        with self._locked():
            if not (self.dir / ".initialized").exists():
                self._initialise(port or free_port(HOST), ldaps_port or free_port(HOST))
            state = self._state()
            for asked, key in ((port, "port"), (ldaps_port, "ldaps_port")):
                if asked is not None and asked != state[key]:
                    raise LabError(f"the directory under {self.dir} listens on {key} {state[key]}, not {asked}; "
                                   "`down --purge` first to change it")
            if self.pid() is None:
                self._start()
            self._wait_ready()
            return self.status()

    def down(self, *, purge: bool = False, timeout: float = 10.0) -> None:
        """Stop slapd (SIGTERM, SIGKILL after ``timeout``), by PID. ``purge`` also deletes everything."""
        if not self.dir.exists():
            return
        with self._locked():
            pid = self.pid()
            if pid is not None:
                _signal(pid, signal.SIGTERM)
                if not _wait_gone(pid, timeout):
                    _signal(pid, signal.SIGKILL)
                    if not _wait_gone(pid, timeout):
                        raise LabError(f"slapd pid {pid} survived SIGKILL; see {self.log_file}")
            self._started_pid = None
            if purge:
                for child in self.dir.iterdir():
                    if child.name == ".lock":
                        continue
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()

    def status(self) -> LabDirectoryInfo:
        state = self._state()
        users = tuple(
            LabDirectoryUser(
                name=user.uid,
                dn=ldif.user_dn(user.uid),
                password_file=self._password_file(user.uid),
                groups=ldif.expected_groups(user.uid),
                locked=user.locked,
            )
            for user in ldif.EXAMPLE_USERS
        )
        return LabDirectoryInfo(
            dir=self.dir,
            url=f"ldap://{HOST}:{state['port']}",
            ldaps_url=f"ldaps://{HOST}:{state['ldaps_port']}",
            ldapi_url=self.ldapi_url,
            base_dn=ldif.SUFFIX,
            user_base=ldif.PEOPLE,
            group_base=ldif.GROUPS,
            bind_dn=ldif.SERVICE_DN,
            bind_password_file=self.bind_password_file,
            ca_file=self.ca_file,
            log_file=self.log_file,
            pid=self.pid(),
            users=users,
        )

    def pid(self) -> int | None:
        """PID of this lab's running slapd, or None. A pidfile naming a dead process, or a process that
        is not slapd started on this lab's slapd.d, counts as not running (and is never signalled)."""
        try:
            text = self.pid_file.read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            return None
        pid = int(text)
        return pid if _alive(pid) and self._is_our_slapd(_cmdline(pid)) else None

    @property
    def ldapi_url(self) -> str:
        return "ldapi://" + quote(str(self.socket), safe="")

    @property
    def initialised(self) -> bool:
        return (self.dir / ".initialized").exists()

    # -- set-up ----------------------------------------------------------------------------------------

    def _initialise(self, port: int, ldaps_port: int) -> None:
        for sub in (self.tls_dir, self.secrets_dir, self.slapd_d, self.db_dir):
            if sub.exists():
                shutil.rmtree(sub)  # a half-done earlier set-up
        for sub in (self.tls_dir, self.secrets_dir, self.slapd_d, self.db_dir, self.run_dir):
            sub.mkdir(parents=True, mode=0o700)
        make_ca(self.tls_dir, "virtplane lab directory CA")
        make_server_cert(self.tls_dir, ("DNS:localhost", f"IP:{HOST}"))
        passwords = {user.uid: secrets.token_urlsafe(18) for user in ldif.EXAMPLE_USERS}
        passwords[ldif.SERVICE_DN] = secrets.token_urlsafe(24)
        for uid, password in passwords.items():
            path = self.bind_password_file if uid == ldif.SERVICE_DN else self._password_file(uid)
            _write_private(path, password)  # no newline: `ldapwhoami -y FILE` sends the file as it is
        paths = ldif.ConfigPaths(
            data_dir=self.db_dir,
            pid_file=self.pid_file,
            args_file=self.run_dir / "slapd.args",
            ca_file=self.ca_file,
            cert_file=self.tls_dir / "server.crt",
            key_file=self.tls_dir / "server.key",
        )
        (self.dir / "config.ldif").write_text(ldif.render_config(paths))
        _write_private(self.dir / "data.ldif", ldif.render_data(passwords))
        _run([SLAPADD, "-n0", "-F", str(self.slapd_d), "-l", str(self.dir / "config.ldif")], "slapadd (cn=config)")
        _run([SLAPADD, "-n1", "-F", str(self.slapd_d), "-l", str(self.dir / "data.ldif")], "slapadd (example tree)")
        self.state_file.write_text(json.dumps({"port": port, "ldaps_port": ldaps_port}) + "\n")
        (self.dir / ".initialized").touch()

    def _password_file(self, uid: str) -> Path:
        return self.secrets_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", uid) + ".password")

    def _state(self) -> dict[str, int]:
        try:
            state: dict[str, int] = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab directory under {self.dir}; run `up` first") from None
        return state

    # -- processes ---------------------------------------------------------------------------------------

    def _listen_urls(self) -> str:
        state = self._state()
        return f"ldap://{HOST}:{state['port']}/ ldaps://{HOST}:{state['ldaps_port']}/ {self.ldapi_url}"

    def _command(self) -> list[str]:
        return [SLAPD, "-h", self._listen_urls(), "-F", str(self.slapd_d), "-d", "stats"]

    def _is_our_slapd(self, argv: list[str]) -> bool:
        return bool(argv) and os.path.basename(argv[0]) == "slapd" and _option(argv, "-F") == str(self.slapd_d)

    def _start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pid_file.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)  # left by a slapd that was killed
        with self.log_file.open("ab") as log:
            log.write(f"--- starting slapd at {time.ctime()}: {' '.join(self._command())}\n".encode())
        # `sh` starts slapd in the background and exits: slapd (foreground, logging to its file) is then
        # nobody's child here, in a session of its own, and found again through its pidfile.
        done = subprocess.run(
            ["/bin/sh", "-c", 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!', "sh",
             str(self.log_file), *self._command()],
            capture_output=True, text=True, timeout=30, check=False, start_new_session=True,
        )
        if done.returncode != 0 or not done.stdout.strip().isdigit():
            raise LabError(f"could not start slapd: {done.stderr.strip()}")
        self._started_pid = int(done.stdout.strip())

    def _wait_ready(self) -> None:
        """Poll until StartTLS and ldaps both accept the service account (with our CA), or fail at the
        deadline / as soon as slapd has exited."""
        info = self.status()
        configs = [info.client_config(ldaps=False), info.client_config(ldaps=True)]
        deadline = time.monotonic() + self.start_timeout
        started = self._started_pid
        while True:
            pid = self.pid()
            if pid is None and (started is None or not _alive(started)):
                raise LabError(f"slapd is not running (exited at start?); see {self.log_file}:\n{self._log_tail()}")
            try:
                for config in configs:
                    check_directory(config.model_copy(update={"connect_timeout": 1.0, "operation_timeout": 2}))
                if pid is not None:
                    return
            except DirectoryUnavailable as err:
                if err.reason not in (Unavailable.UNREACHABLE, Unavailable.TIMEOUT):
                    raise LabError(f"slapd answers but is not usable: {err}") from err
                if time.monotonic() >= deadline:
                    raise LabError(f"slapd not ready after {self.start_timeout:.0f} s: {err}; "
                                   f"see {self.log_file}") from err
            time.sleep(0.05)  # poll interval

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


# -- TLS material (openssl CLI) ---------------------------------------------------------------------------


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256, 10 years) as ``ca.crt`` / ``ca.key`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    _run([OPENSSL, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", f"/CN={name}",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign",
          "-addext", "subjectKeyIdentifier=hash"], "openssl (CA)")
    os.chmod(key, 0o600)
    return cert, key


def make_server_cert(directory: Path, names: tuple[str, ...]) -> tuple[Path, Path]:
    """``server.crt`` / ``server.key`` signed by ``ca.crt`` in ``directory``, for ``names`` (SAN entries
    such as ``DNS:localhost``, ``IP:127.0.0.1``)."""
    csr, cert, key = directory / "server.csr", directory / "server.crt", directory / "server.key"
    ext = directory / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(names)}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _run([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", str(key), "-out", str(csr), "-subj", "/CN=virtplane lab directory"], "openssl (server key)")
    os.chmod(key, 0o600)
    _run([OPENSSL, "x509", "-req", "-in", str(csr), "-CA", str(directory / "ca.crt"),
          "-CAkey", str(directory / "ca.key"), "-set_serial", str(secrets.randbits(63)), "-days", "825",
          "-extfile", str(ext), "-out", str(cert)], "openssl (sign server cert)")
    csr.unlink()
    return cert, key


# -- small process helpers ----------------------------------------------------------------------------------


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise LabError(f"{what} failed ({done.returncode}): {' '.join(argv)}\n{done.stderr.strip()}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1]
    return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # poll interval
    return True
