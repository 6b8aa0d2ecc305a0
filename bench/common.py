"""Shared helpers for the benchmarks: start/stop etcd and the server (by PID), VM specs, percentiles.

Each benchmark starts everything it needs under a fresh temporary directory and stops exactly what it
started (never by process name).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.server.etcd import EmbeddedEtcd, free_port  # noqa: E402

VIRTPLANE = str(Path(sys.executable).parent / "virtplane")


def stop_on_sigterm() -> None:
    """SIGTERM -> SystemExit, so `finally` blocks stop the etcd / server this script started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def load_note() -> str:
    one, five, _ = os.getloadavg()
    return f"load avg {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} cores"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def start_etcd(base: Path) -> EmbeddedEtcd:
    etcd = EmbeddedEtcd(base / "etcd")
    etcd.start()
    return etcd


@dataclass
class Server:
    url: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path
    etcd_endpoint: str = ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def token(self) -> str:
        return json.loads(Path(self.env["VIRTPLANE_CONFIG"]).read_text())["token"]


def start_server(data_dir: Path, etcd: EmbeddedEtcd | None, *extra: str, virtplane: str = VIRTPLANE) -> Server:
    """A `virtplane server` process; on ``etcd`` (external) or, with None, on its own embedded etcd
    (then ``Server.etcd_endpoint`` is read from its log). ``virtplane``: another build's binary (a baseline)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VIRTPLANE_CONFIG": str(data_dir / "config.json")}
    env.pop("VIRTPLANE_SERVER", None)
    env.pop("VIRTPLANE_TOKEN", None)
    args = [
        virtplane,
        "server",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        *(["--etcd", etcd.endpoint] if etcd is not None else []),
        *extra,
    ]
    log = data_dir / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(url, env, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200 and (data_dir / "config.json").exists():
                if etcd is not None:
                    server.etcd_endpoint = etcd.endpoint
                    return server
                found = re.search(r"embedded at (\S+)", log.read_text())
                if found:
                    server.etcd_endpoint = found.group(1)
                    return server
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server not ready in 60 s:\n{log.read_text()}")


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LAST_CPU: dict[str, float] = {}


def vp(server: Server, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI; returns (result, wall seconds). CPU seconds of the CLI process and of the server
    during the call are left in LAST_CPU["cli"] / LAST_CPU["server"] (less sensitive to machine load)."""
    import resource

    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = proc_cpu(server.proc.pid)
    t0 = time.perf_counter()
    done = subprocess.run(
        [VIRTPLANE, *args], env=server.env, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
    )
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU["cli"] = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    LAST_CPU["server"] = proc_cpu(server.proc.pid) - s0
    return done, wall


def vm_doc(i: int, cluster: str = "bench", cores: int = 1, memory: str = "64Mi") -> dict:
    return {
        "apiVersion": "virtplane.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": f"vm-{i:05d}", "labels": {"bench": "yes", "group": f"g{i % 10}"}},
        "spec": {"cluster": cluster, "runStrategy": "Always", "cpu": {"cores": cores}, "memory": {"size": memory}},
    }


def cluster_doc(name: str = "bench") -> dict:
    return {
        "apiVersion": "virtplane.io/v1",
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {"scheduling": {"policy": "EvenlyDistributed", "cpuOvercommit": 16.0, "memoryOvercommit": 1.0}},
    }


def host_doc(i: int, cluster: str = "bench", cpus: int = 64, memory_gib: int = 64) -> dict:
    return {
        "apiVersion": "virtplane.io/v1",
        "kind": "Host",
        "metadata": {"name": f"host-{i:03d}"},
        "spec": {"cluster": cluster, "uri": f"test:///default?cpus={cpus}&memory={memory_gib}"},
    }


def _yaml(value: object, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        out = ""
        for k, v in value.items():
            if isinstance(v, dict):
                out += f"{pad}{k}:\n" + _yaml(v, indent + 1)
            else:
                out += f"{pad}{k}: {json.dumps(v)}\n"
        return out
    raise TypeError(value)


def write_yaml(path: Path, docs: list[dict]) -> None:
    """Block-style multi-document YAML, as a Git repository would hold it."""
    path.write_text("".join("---\n" + _yaml(d) for d in docs))


def foreign_domain(xml: str, name: str) -> ET.Element:
    """One of our domain XMLs as somebody else's domain (a baseline for plain virsh): renamed, without uuid,
    MACs or virtplane metadata, so our controllers leave it alone."""
    root = ET.fromstring(xml)
    root.find("name").text = name  # type: ignore[union-attr]
    for tag in ("uuid", "metadata"):
        for el in root.findall(tag):
            root.remove(el)
    for iface in root.findall("./devices/interface"):
        for mac in iface.findall("mac"):
            iface.remove(mac)
    return root


LAB_CACHE = Path("/var/cache/virtplane-lab")


@dataclass
class LabRun:
    """A lab bench's world: 2 lab hosts, an etcd and a `virtplane server` with controllers, under ``work``."""

    work: Path
    lab: object  # controller.dev.lab.hosts.Lab
    server: object  # tests.e2e.conftest.ServerProcess (its .log is read)
    api: object  # controller.client.sdk.Client
    uris: dict[str, str]
    docs: list[dict]  # the lab's Host (accelerator annotated) and StorageDomain manifests
    image: object  # controller.dev.lab.guest.GuestImage
    accel: str


@contextmanager
def lab_with_server(prefix: str, hosts: int = 2, *server_args: str, lock_manager: bool = False) -> Iterator[LabRun]:
    """Start the lab hosts, etcd and the server (root only); stop all of them, by PID, whatever happens.
    ``server_args``: extra `virtplane server` arguments ("{lab}" stands for the lab's directory)."""
    from controller.client.sdk import Client
    from controller.dev.lab.cli import lab_manifests
    from controller.dev.lab.guest import build_guest_image, probe_accel
    from controller.dev.lab.hosts import Lab
    from tests.e2e.conftest import start_server as start_lab_server

    image = build_guest_image(LAB_CACHE / "guest")
    accel = probe_accel(image, LAB_CACHE / "guest").accel
    work = Path(tempfile.mkdtemp(prefix=prefix))
    lab = Lab(work / "lab", qemu_caps_dir=LAB_CACHE / "qemu-caps", lock_manager=lock_manager)
    etcd = EmbeddedEtcd(work / "etcd")
    server = None
    try:
        lab.up(hosts)
        etcd.start()
        args = [a.replace("{lab}", str(lab.dir)) for a in server_args]
        if "--lab-dir" not in args:  # the lab's sockets, images and storage are allowed host paths
            args += ["--lab-dir", str(lab.dir)]
        server = start_lab_server(work / "server", *args, etcd=etcd)
        config = json.loads((work / "server" / "config.json").read_text())
        api = Client(config["server"], config.get("token"))
        try:
            docs = lab_manifests(lab.status(), lab.shared_dir, "lab", None if accel == "kvm" else "tcg")
            yield LabRun(work, lab, server, api, {h.name: h.uri for h in lab.status()}, docs, image, accel)
        finally:
            api.close()
    finally:
        if server is not None:
            server.stop()
        etcd.stop()
        lab.down()
