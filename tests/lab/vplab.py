"""Helpers for lab tests through a real `virtplane server`: lab hosts + manifests + the CLI + virsh."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.dev.lab.cli import lab_manifests
from controller.dev.lab.guest import READY_MARKER, GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import REPO, VIRTPLANE, ServerProcess, start_server
from tests.e2e.helpers import wait_for

CLUSTER = "lab"


@dataclass
class LabCluster:
    lab: Lab
    server: ServerProcess
    image: GuestImage

    def vp(self, *args: str, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VIRTPLANE, *args], env=self.server.env, input=input, capture_output=True,
                              text=True, timeout=timeout, check=False, cwd=REPO)

    def apply(self, *docs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        done = self.vp("apply", "-f", "-", input=yaml.safe_dump_all(docs, sort_keys=False))
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def get(self, kind: str, name: str) -> dict[str, Any]:
        done = self.vp("get", kind, name, "-o", "json")
        if done.returncode != 0:
            return {}
        body: dict[str, Any] = json.loads(done.stdout)
        return body

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return self.get(kind, name).get("status") or {}

    def wait_phase(self, kind: str, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
        return wait_for(f"{kind}/{name} phase {phase} (last: {self.status(kind, name)})",
                        lambda: (s if (s := self.status(kind, name)).get("phase") == phase else None), timeout)

    def uri(self, host: str) -> str:
        return self.lab.host(host).uri

    def reconciles(self, kind: str) -> float:
        """How many reconciles of ``kind`` the server has run (``virtplane_reconciles_total`` on /metrics)."""
        for line in self.server.metrics().splitlines():
            if line.startswith(f'virtplane_reconciles_total{{kind="{kind}"}}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_reconciles(self, kind: str, more: int, since: float | None = None, timeout: float = 60) -> None:
        """Until the server has reconciled ``kind`` ``more`` times after ``since`` (a count read before the
        trigger; default: now): an observation window measured in reconciles, not in seconds."""
        start = self.reconciles(kind) if since is None else since
        wait_for(f"{more} more {kind} reconciles", lambda: self.reconciles(kind) >= start + more, timeout)

    def console(self, vm: str, host: str = "lab-1") -> str:
        """What the guest printed on its serial console so far (the lab logs it on the host)."""
        path = self.lab.dir / "hosts" / host / "log" / "qemu" / f"{vm}.console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_booted(self, vm: str, host: str = "lab-1", timeout: float = 60) -> None:
        """Until the test guest says it is up (its READY marker on the console)."""
        wait_for(f"{vm} booted on {host}", lambda: READY_MARKER in self.console(vm, host), timeout)

    def disk(self, name: str, size: str = "64Mi", source: dict[str, Any] | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"storageDomain": "lab-shared", "format": "qcow2"}
        if source is not None:
            spec["source"] = source
        else:
            spec["size"] = size
        return {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": name}, "spec": spec}

    def vm(self, name: str, disks: list[str], *, nics: list[tuple[str, str]] = (),  # type: ignore[assignment]
           memory: str = "256Mi", max_memory: str = "384Mi", host: str = "lab-1") -> dict[str, Any]:
        return {
            "apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {
                "cluster": CLUSTER, "runStrategy": "Always", "machine": "pc",
                "cpu": {"cores": 1}, "memory": {"size": memory, "maxSize": max_memory},
                "boot": {"kernel": str(self.image.kernel), "initrd": str(self.image.initrd),
                         "cmdline": "console=ttyS0 panic=-1"},
                "disks": [{"disk": d} for d in disks],
                "nics": [{"name": n, "network": net} for n, net in nics],
                "placement": {"allowedHosts": [host]},
            },
        }


def lab_cluster(lab: Lab, image: GuestImage, data_dir: Path, etcd: EmbeddedEtcd, accel: str,
                *server_args: str, cluster_spec: dict[str, Any] | None = None) -> Iterator[LabCluster]:
    server = start_server(data_dir, *server_args, etcd=etcd)
    try:
        cluster = LabCluster(lab, server, image)
        docs = lab_manifests(lab.status(), lab.shared_dir, CLUSTER, accel=accel)
        cluster.apply({"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": CLUSTER},
                       "spec": cluster_spec or {}}, *docs)
        cluster.wait_phase("StorageDomain", "lab-shared", "Ready", timeout=90)
        yield cluster
    finally:
        server.stop()
