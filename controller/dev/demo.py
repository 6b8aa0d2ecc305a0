"""The README's main job: server on embedded etcd, examples/ applied, everything shown, clean stop.

Runs the real `virtplane` CLI as a user would, against a server it starts in a fresh data directory
(so it never touches your own configuration), and stops that server by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from controller.server.etcd import free_port

REPO = Path(__file__).resolve().parents[2]  # controller/dev/demo.py -> the repository
VIRTPLANE = str(Path(sys.executable).parent / "virtplane")


def _run(args: list[str], env: dict[str, str], check: bool = True) -> int:
    print(f"\n$ virtplane {' '.join(args)}", flush=True)
    rc = subprocess.call([VIRTPLANE, *args], env=env)
    if check and rc != 0:
        raise SystemExit(f"`virtplane {' '.join(args)}` exited {rc}")
    return rc


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server was not ready within {timeout:g} s")


# examples/disks/debian-12-base.yaml imports this image (in the `shared` storage domain of examples/).
EXAMPLE_IMAGE = Path("/srv/virtplane/shared/images/debian-12-genericcloud-amd64.qcow2")


def ensure_example_image(path: Path = EXAMPLE_IMAGE) -> None:
    """The Disk import of examples/ reads a real file (a missing one is Failed, never Ready): without the
    Debian cloud image at hand, put a blank qcow2 stand-in there (the hosts are simulated anyway)."""
    if path.exists():
        return
    print(f"== {path} is missing: creating a blank 64 MiB qcow2 stand-in (qemu-img create)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)


def _change_demo(examples: Path, data_dir: Path, env: dict[str, str]) -> None:
    """Edit a copy of the Git checkout as an operator would: more memory for web-1, within maxSize."""
    work = data_dir / "checkout"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(examples, work)
    web = work / "vms" / "web.yaml"
    text = web.read_text()
    web.write_text(text.replace("size: 2Gi", "size: 3Gi", 1))
    print("\n== edit vms/web.yaml: web-1 memory.size 2Gi -> 3Gi (maxSize is 4Gi: a live change)", flush=True)
    _run(["diff", "-f", str(work)], env, check=False)  # exit 1: something differs
    _run(["apply", "-f", str(work)], env)
    _run(["wait", "--for", "condition=Ready", "vm/web-1", "--timeout", "60"], env)
    _run(["get", "vm", "web-1", "-o", "wide"], env)


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (the lab runs libvirtd in mount namespaces)"
    missing = [t for t in ("libvirtd", "qemu-system-x86_64", "qemu-img", "unshare", "busybox") if not shutil.which(t)]
    return f"missing {', '.join(missing)}" if missing else None


def _lab_manifests(lab_dir: Path) -> str:
    from controller.dev.lab.guest import build_guest_image

    image = build_guest_image(lab_dir / "guest")
    return f"""\
apiVersion: virtplane.io/v1
kind: Cluster
metadata: {{name: lab}}
spec: {{}}
---
apiVersion: virtplane.io/v1
kind: Network
metadata: {{name: lab-user}}
spec: {{cluster: lab, type: user}}
---
apiVersion: virtplane.io/v1
kind: Disk
metadata: {{name: lab-vm-data}}
spec: {{storageDomain: lab-shared, size: 64Mi}}
---
apiVersion: virtplane.io/v1
kind: VirtualMachine
metadata: {{name: lab-vm}}
spec:
  cluster: lab
  cpu: {{cores: 1, maxCores: 2}}
  memory: {{size: 256Mi, maxSize: 384Mi}}
  disks: [{{disk: lab-vm-data}}]
  nics: [{{name: eth0, network: lab-user}}]
  boot: {{kernel: {image.kernel}, initrd: {image.initrd}, cmdline: "{image.cmdline}"}}
"""


def _lab_demo(data_dir: Path, env: dict[str, str]) -> None:
    """Real libvirtd hosts and a real QEMU guest: create, look with virsh, live-migrate, clean up."""
    lab_dir = data_dir / "lab"
    print(f"\n== the lab: 2 libvirtd hosts with real QEMU under {lab_dir}", flush=True)
    up = subprocess.run(
        [VIRTPLANE, "lab", "up", "--hosts", "2", "--cluster", "lab", "--dir", str(lab_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(up.stderr)
    if up.returncode != 0:
        print(f"lab could not start (exit {up.returncode}); skipping it", flush=True)
        return
    try:
        (data_dir / "lab.yaml").write_text(up.stdout + "---\n" + _lab_manifests(lab_dir))
        _run(["apply", "-f", str(data_dir / "lab.yaml")], env)
        _run(["wait", "--for", "condition=Ready", "vm/lab-vm", "--timeout", "120"], env)
        _run(["get", "vms", "lab-vm", "-o", "wide"], env)
        uris = {
            line.split()[0]: line.split()[-1]
            for line in subprocess.run(
                [VIRTPLANE, "lab", "status", "--dir", str(lab_dir)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.splitlines()[1:]
            if line.strip()
        }
        for host, uri in sorted(uris.items()):
            print(f"\n$ virsh -c {uri} list    # {host}", flush=True)
            subprocess.run(["virsh", "-c", uri, "list"], check=False)
        _run(["migrate", "vm/lab-vm", "--wait"], env, check=False)
        _run(["get", "migrations", "-o", "wide"], env, check=False)
        for host, uri in sorted(uris.items()):
            print(f"\n$ virsh -c {uri} list    # {host}", flush=True)
            subprocess.run(["virsh", "-c", uri, "list"], check=False)
        _run(["delete", "vm/lab-vm"], env, check=False)
        _run(["wait", "--for", "delete", "vm/lab-vm", "--timeout", "120"], env, check=False)
    finally:
        subprocess.run([VIRTPLANE, "lab", "down", "--dir", str(lab_dir)], env=env, check=False)
        print("== lab down", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="Keep state here (default: a temporary directory).")
    parser.add_argument("--examples", type=Path, default=REPO / "examples")
    parser.add_argument("--keep-running", action="store_true", help="Leave the server running; stop with Ctrl-C.")
    parser.add_argument("--no-lab", action="store_true", help="Skip the part on real libvirtd + QEMU hosts.")
    args = parser.parse_args(argv)

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="virtplane-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VIRTPLANE_CONFIG": str(data_dir / "config.json")}
    env.pop("VIRTPLANE_SERVER", None)
    env.pop("VIRTPLANE_TOKEN", None)
    why_not = "--no-lab given" if args.no_lab else lab_unavailable()
    where = (
        "libvirt's test driver, then real libvirtd + QEMU lab hosts"
        if why_not is None
        else (f"libvirt's test driver only ({why_not})")
    )
    print(f"== examples/ run on simulated hosts ({where})", flush=True)
    print(f"== starting `virtplane server` on {url} (data dir {data_dir})", flush=True)
    log_path = data_dir / "server.log"
    print(f"   server log: {log_path}", flush=True)
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            [VIRTPLANE, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
             # the lab's sockets and guest kernel are under lab/ (specs may name only allowed host paths)
             "--lab-dir", str(data_dir / "lab")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, server)
        ensure_example_image()
        _run(["apply", "-f", str(args.examples), "--source", "examples"], env)
        _run(["wait", "--for", "condition=Ready", "hosts", "--all", "--timeout", "60"], env)
        for vm in ("db-1", "web-1", "web-2", "app-1"):  # the VMs whose runStrategy starts them
            _run(["wait", "--for", "condition=Ready", f"vm/{vm}", "--timeout", "60"], env)
        _run(["wait", "--for", "condition=Ready", "vms", "-l", "app=ci", "--timeout", "60"], env)
        for kind in ("clusters", "hosts", "storagedomains", "networks", "disks", "vms", "vmpools", "snapshots"):
            _run(["get", kind], env)
        _run(["diff", "-f", str(args.examples)], env)  # exit 0: the store matches Git
        _change_demo(args.examples, data_dir, env)
        _run(["events", "--for", "vm/web-1"], env)
        why_not = "--no-lab given" if args.no_lab else lab_unavailable()
        if why_not is None:
            _lab_demo(data_dir, env)
        else:
            print(f"\n== lab skipped ({why_not}): the examples above ran on libvirt's test driver only", flush=True)
        if args.keep_running:
            print("\nserver running; press Ctrl-C to stop", flush=True)
            server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        print(f"\n== server stopped (exit {server.returncode})", flush=True)
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
