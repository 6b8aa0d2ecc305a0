"""End-to-end fixtures: a real `virtplane server` process on the session etcd, and the real CLI.

- ``server``: one server process for the module (no controllers unless the module asks), its own
  config file; the keyspace is wiped before each test by ``vp``.
- ``vp``: run the CLI as a user would: ``vp("apply", "-f", path)`` -> CompletedProcess (never raises).
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controller.server.etcd import EmbeddedEtcd, free_port

VIRTPLANE = str(Path(sys.executable).parent / "virtplane")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    data_dir: Path
    log: Path

    def diagnose(self) -> str:
        """For a failure message: where the server's threads are (py-spy, when installed) and its log's end."""
        spy = Path(sys.executable).with_name("py-spy")
        code = self.proc.poll()
        stacks = "(py-spy not installed)" if code is None else f"(the server exited with {code})"
        if spy.exists() and code is None:
            done = subprocess.run([str(spy), "dump", "--pid", str(self.proc.pid)], capture_output=True, text=True,
                                  timeout=60)
            stacks = done.stdout[-12000:] + done.stderr[-2000:]
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-80:])
        return f"--- server stacks (py-spy dump):\n{stacks}\n--- server log (end):\n{tail}"

    @property
    def token(self) -> str:
        return str(json.loads((self.data_dir / "config.json").read_text())["token"])

    def metrics(self) -> str:
        """/metrics, with the server's token (it needs one unless --metrics-public)."""
        response = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        response.raise_for_status()
        return response.text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _config_names(data_dir: Path, url: str) -> bool:
    """The CLI config in ``data_dir`` points at ``url`` (a restarted server rewrites it shortly after it listens)."""
    try:
        return bool(json.loads((data_dir / "config.json").read_text()).get("server") == url)
    except (FileNotFoundError, json.JSONDecodeError):
        return False


# Lab hosts live in pytest's temporary directories and boot the guest cached under the lab cache: the
# servers the tests start allow those (``--allowed-socket-dir``/``-image-dir``/``-storage-dir``), as an
# operator would.
LAB_CACHE = Path(os.environ.get("VIRTPLANE_LAB_CACHE", "/var/cache/virtplane-lab"))
TEST_TMP = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"


def start_server(
    data_dir: Path, *extra: str, etcd: EmbeddedEtcd | None = None, env_extra: dict[str, str] | None = None,
    lab_paths: bool = True,
) -> ServerProcess:
    port = free_port()
    tls = "--tls-self-signed" in extra  # then wait for the certificate and check the server against it
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VIRTPLANE_CONFIG": str(data_dir / "config.json"), **(env_extra or {})}
    env.pop("VIRTPLANE_SERVER", None)
    env.pop("VIRTPLANE_TOKEN", None)
    args = [VIRTPLANE, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra]
    if lab_paths:
        args += ["--allowed-socket-dir", str(TEST_TMP), "--allowed-image-dir", str(LAB_CACHE),
                 "--allowed-storage-dir", str(TEST_TMP)]
    if etcd is not None:
        args += ["--etcd", etcd.endpoint]
    log = data_dir / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(url, env, proc, data_dir, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log.read_text()}")
        cert = data_dir / "tls" / "server.crt"
        try:
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(cert)) if tls else True
            ready = httpx.get(f"{url}/readyz", timeout=1, verify=verify).status_code == 200
            if ready and _config_names(data_dir, url):
                return server
        except (FileNotFoundError, httpx.TransportError):  # no certificate yet, or not listening yet
            pass
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"server not ready in 60 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("server"), "--no-controllers", etcd=etcd)
    try:
        yield proc
    finally:
        proc.stop()


def etcdctl_run(endpoint: str, *args: str) -> str:
    done = subprocess.run(
        ["/usr/bin/etcdctl", f"--endpoints={endpoint}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=30,
        check=True,
    )
    return done.stdout


def etcd_revision(endpoint: str) -> int:
    import json

    out = etcdctl_run(endpoint, "endpoint", "status", "-w", "json")
    return int(json.loads(out)[0]["Status"]["header"]["revision"])


Vp = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def vp(server: ServerProcess, etcd: EmbeddedEtcd) -> Vp:
    etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")

    def run(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [VIRTPLANE, *args],
            env=server.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO,
        )

    return run
