"""Issue 4: live migration of an idle test guest between two lab hosts, driven by a spec change (root only).

    python bench/lab_migration.py [--n 6] [--max-downtime-ms 100]

Starts its own lab (2 hosts), etcd and `virtplane server` (with controllers), boots the busybox test guest
(TCG unless the KVM probe boots it), then flips the VM's placement.allowedHosts between lab-1 and lab-2
n times. Per migration:
- overhead: the apply call was sent -> the controller called libvirt's migrate (its log line
  "migration of X started", same machine clock, ms resolution): the API write, the watch, the queue, the
  observation and the plan;
- libvirt call: how long virDomainMigrate3 blocked (log line "completed after X s");
- QEMU time and downtime: `virsh domjobinfo --completed` on the target ("Time elapsed", "Total downtime");
- end to end: the apply returned -> `virsh list` shows the guest on the target only.
Baseline in the same run, interleaved with ours: a copy of the same guest (our codec's XML without our
metadata, its own disk) migrated n times with plain `virsh migrate --live --persistent --undefinesource
--unsafe` after `virsh migrate-setmaxdowntime` to the same limit: the call's time and the downtime reported.
Everything is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import foreign_domain, lab_with_server, pct

STARTED = re.compile(r"^(\S+ \S+) INFO virtplane.migration migration of (\S+) started")
COMPLETED = re.compile(r"migration of \S+ completed after ([0-9.]+) s")


def virsh(uri: str, *args: str) -> str:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, check=True).stdout


def wait(what: str, probe: Any, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def started_times(log: Path) -> list[float]:
    out = []
    for line in log.read_text().splitlines():
        m = STARTED.match(line)
        if m:
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


class PlainVirsh:
    """The baseline: a foreign copy of bm (its own disk), migrated with plain virsh, alternating hosts."""

    def __init__(self, uris: dict[str, str], work: Path, max_downtime_ms: int) -> None:
        self.uris, self.max_downtime_ms, self.on = uris, max_downtime_ms, "lab-1"
        on = next(h for h, u in uris.items() if "bm" in virsh(u, "list", "--name").split())
        root = foreign_domain(virsh(uris[on], "dumpxml", "--inactive", "bm"), "rawmig")
        source = root.find("./devices/disk/source")
        assert source is not None
        disk = Path(source.attrib["file"]).with_name("rawmig.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
        source.attrib["file"] = str(disk)
        (work / "rawmig.xml").write_text(ET.tostring(root, encoding="unicode"))
        virsh(uris["lab-1"], "define", str(work / "rawmig.xml"))
        virsh(uris["lab-1"], "start", "rawmig")

    def migrate(self) -> tuple[float, float]:
        """(virsh migrate's wall time, downtime reported on the target) in ms."""
        target = "lab-2" if self.on == "lab-1" else "lab-1"
        virsh(self.uris[self.on], "migrate-setmaxdowntime", "rawmig", str(self.max_downtime_ms))
        t0 = time.monotonic()
        virsh(self.uris[self.on], "migrate", "--live", "--persistent", "--undefinesource", "--unsafe", "rawmig",
              self.uris[target], "tcp://127.0.0.1")
        call_ms = (time.monotonic() - t0) * 1000
        self.on = target
        info = virsh(self.uris[target], "domjobinfo", "--completed", "rawmig")
        job = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return call_ms, float(job["Total downtime"].split()[0])

    def remove(self) -> None:
        virsh(self.uris[self.on], "destroy", "rawmig")
        virsh(self.uris[self.on], "undefine", "rawmig")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--max-downtime-ms", type=int, default=100)
    args = ap.parse_args()
    with lab_with_server("bench-migration-") as run:
        api, uris, docs, image, accel = run.api, run.uris, run.docs, run.image, run.accel
        work, server = run.work, run.server
        cluster = {
            "apiVersion": "virtplane.io/v1",
            "kind": "Cluster",
            "metadata": {"name": "lab"},
            "spec": {"migration": {"maxDowntimeMs": args.max_downtime_ms}},
        }
        disk = {
            "apiVersion": "virtplane.io/v1",
            "kind": "Disk",
            "metadata": {"name": "bm-root"},
            "spec": {"storageDomain": "lab-shared", "size": "16Mi"},
        }

        def vm(host: str) -> dict[str, Any]:
            return {
                "apiVersion": "virtplane.io/v1",
                "kind": "VirtualMachine",
                "metadata": {"name": "bm"},
                "spec": {
                    "cluster": "lab",
                    "runStrategy": "Always",
                    "cpu": {"cores": 1},
                    "memory": {"size": "256Mi"},
                    "disks": [{"disk": "bm-root"}],
                    "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline},
                    "placement": {"allowedHosts": [host]},
                },
            }

        api.apply([cluster, *docs, disk, vm("lab-1")])
        wait("bm running on lab-1", lambda: "bm" in virsh(uris["lab-1"], "list", "--name").split())
        baseline = PlainVirsh(uris, work, args.max_downtime_ms)
        time.sleep(5)  # let the guests finish booting: idle guests are measured
        rows = []
        raw = []
        for i in range(args.n):
            source, target = ("lab-1", "lab-2") if i % 2 == 0 else ("lab-2", "lab-1")
            sent = time.time()
            api.apply([vm(target)])
            applied = time.time()
            wait(
                f"bm on {target} only",
                lambda: (
                    "bm" in virsh(uris[target], "list", "--name").split()
                    and "bm" not in virsh(uris[source], "list", "--all", "--name").split()
                ),
            )
            end_to_end = time.time() - applied
            job = dict(
                line.split(":", 1)
                for line in virsh(uris[target], "domjobinfo", "--completed", "bm").splitlines()
                if ":" in line
            )
            qemu_ms = float(job["Time elapsed"].split()[0])
            downtime_ms = float(job["Total downtime"].split()[0])
            overhead_ms = (started_times(server.log)[i] - sent) * 1000
            call_ms = float(COMPLETED.findall(server.log.read_text())[i]) * 1000
            rows.append((overhead_ms, qemu_ms, downtime_ms, end_to_end * 1000, call_ms))
            print(
                f"{i + 1}: {source}->{target} overhead {overhead_ms:.0f} ms, libvirt call {call_ms:.0f} ms, "
                f"QEMU {qemu_ms:.0f} ms, downtime {downtime_ms:.0f} ms, "
                f"apply->only on target {end_to_end * 1000:.0f} ms",
                flush=True,
            )
            time.sleep(1)
            raw.append(baseline.migrate())  # interleaved, so both see the same machine
            time.sleep(1)
        baseline.remove()
        for label, col in (("overhead", 0), ("libvirt call", 4), ("QEMU total", 1), ("downtime", 2), ("end to end", 3)):
            values = [r[col] for r in rows]
            print(
                f"{label:>12}: p50 {statistics.median(values):.0f} ms, p95 {pct(values, 95):.0f} ms, "
                f"max {max(values):.0f} ms"
            )
        for label, col in (("libvirt call", 0), ("downtime", 1)):
            values = [r[col] for r in raw]
            print(
                f"{'plain virsh ' + label:>24}: p50 {statistics.median(values):.0f} ms, "
                f"p95 {pct(values, 95):.0f} ms, max {max(values):.0f} ms"
            )
        one, five, _ = os.getloadavg()
        print(f"accel {accel}, guest 256 MiB 1 vCPU, maxDowntimeMs {args.max_downtime_ms}, n={args.n}; "
              f"load avg {one:.2f} (1 min) {five:.2f} (5 min) at the end, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
