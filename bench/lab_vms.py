"""Issue 4 on lab hosts (root only): N small VMs applied -> running, and evacuation of a host by maintenance.

    python bench/lab_vms.py [--n 20] [--evacuate 10]

Starts its own lab (2 hosts), etcd and `virtplane server`, and waits until both Hosts are Ready.
(1) Applies N test-guest VMs (128 MiB, 1 vCPU, direct kernel boot, TCG unless the KVM probe boots the guest)
in one apply and measures, per VM, apply sent -> the domain runs (`virsh list` on the hosts, polled every
50 ms) — p50/p95. Baseline in the same run, once ours are deleted and gone: the same N domains (our
codec's XML, renamed, without our metadata) defined and started with plain `virsh`, as many at once per host
as our per-host limit (4), half on each host; per domain, batch start -> its `virsh start` returned.
(2) Pins `--evacuate` of them to lab-1, then sets `maintenance: true` on lab-1 and measures until every one
runs on lab-2 only (total, and per VM). Everything is stopped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import foreign_domain, lab_with_server, load_note, pct


def running(uri: str) -> set[str]:
    out = subprocess.run(["virsh", "-c", uri, "list", "--name"], capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def vm(name: str, image: Any, hosts: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cluster": "lab",
        "cpu": {"cores": 1},
        "memory": {"size": "128Mi"},
        "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline},
    }
    if hosts:
        spec["placement"] = {"allowedHosts": hosts}
    return {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": name}, "spec": spec}


def raw_batch(uris: dict[str, str], xml: str, n: int, work: Path, per_host: int = 4) -> list[float]:
    """n foreign domains defined + started with plain virsh, half per host, ``per_host`` at once on each;
    seconds from the batch start until each one's `virsh start` returned."""
    hosts = sorted(uris)
    jobs = []
    for i in range(n):
        name, host = f"raw{i:02d}", hosts[i % len(hosts)]
        path = work / f"{name}.xml"
        path.write_text(ET.tostring(foreign_domain(xml, name), encoding="unicode"))
        jobs.append((host, name, path))
    t0 = time.monotonic()

    def one(job: tuple[str, str, Path]) -> float:
        host, name, path = job
        subprocess.run(["virsh", "-c", uris[host], "define", str(path)], capture_output=True, check=True)
        subprocess.run(["virsh", "-c", uris[host], "start", name], capture_output=True, check=True)
        return time.monotonic() - t0

    with ThreadPoolExecutor(per_host * len(hosts)) as pool:
        took = list(pool.map(one, jobs))
    for host, name, _ in jobs:
        subprocess.run(["virsh", "-c", uris[host], "destroy", name], capture_output=True, check=False)
        subprocess.run(["virsh", "-c", uris[host], "undefine", name], capture_output=True, check=False)
    return took


def wait_all(names: set[str], uris: dict[str, str], only_on: str | None, timeout: float) -> dict[str, float]:
    """name -> seconds from now until it ran (on ``only_on`` and nowhere else, if given)."""
    t0 = time.monotonic()
    seen: dict[str, float] = {}
    while len(seen) < len(names):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out: {sorted(names - set(seen))} not running after {timeout:.0f} s")
        per_host = {h: running(u) for h, u in uris.items()}
        for n in names - set(seen):
            hosts_running = {h for h, r in per_host.items() if n in r}
            if hosts_running and (only_on is None or hosts_running == {only_on}):
                seen[n] = time.monotonic() - t0
        time.sleep(0.05)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--evacuate", type=int, default=10)
    args = ap.parse_args()
    with lab_with_server("bench-labvms-") as run:
        api, uris, docs, image, accel, work = run.api, run.uris, run.docs, run.image, run.accel, run.work
        # 2 real cores per lab host: allow 16 vCPUs each (the default overcommit, 4, would stop at 16 VMs).
        cluster = {
            "apiVersion": "virtplane.io/v1",
            "kind": "Cluster",
            "metadata": {"name": "lab"},
            "spec": {"scheduling": {"cpuOvercommit": 16}},
        }
        api.apply([cluster, *docs])
        deadline = time.monotonic() + 120
        while not all(
            (api.get("hosts", h).get("status") or {}).get("phase") == "Ready" for h in uris
        ):  # placement needs both hosts Ready, or everything lands on the first
            if time.monotonic() > deadline:
                raise SystemExit("lab hosts not Ready after 120 s")
            time.sleep(0.2)
        print(f"{load_note()} before the run; accel {accel}", flush=True)

        names = {f"v{i:02d}" for i in range(args.n)}
        sent = time.monotonic()
        api.apply([vm(n, image) for n in sorted(names)])
        after_apply = time.monotonic() - sent
        times = wait_all(names, uris, None, timeout=300)
        latencies = [t + after_apply for t in times.values()]
        placed = {h: sum(1 for n in names if n in running(u)) for h, u in uris.items()}
        print(
            f"(1) {args.n} VMs, one apply -> running (virsh list): p50 {statistics.median(latencies):.2f} s, "
            f"p95 {pct(latencies, 95):.2f} s, max {max(latencies):.2f} s; placed {placed}",
            flush=True,
        )

        # Baseline: the same domains with plain virsh, once ours are gone (the guests stop on ACPI).
        on = next(h for h, u in uris.items() if "v00" in running(u))
        xml = subprocess.run(
            ["virsh", "-c", uris[on], "dumpxml", "--inactive", "v00"], capture_output=True, text=True, check=True
        ).stdout
        for n in sorted(names):
            api.delete("virtualmachines", n)
        deadline = time.monotonic() + 180
        while any(running(u) for u in uris.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        raw = raw_batch(uris, xml, args.n, work)
        print(
            f"    baseline, plain virsh define+start of the same {args.n} domains (4 at once per host): "
            f"p50 {statistics.median(raw):.2f} s, p95 {pct(raw, 95):.2f} s, max {max(raw):.2f} s "
            f"-> ratio p95 ours/raw {pct(latencies, 95) / pct(raw, 95):.2f}x",
            flush=True,
        )
        deadline = time.monotonic() + 60
        while any(running(u) for u in uris.values()) and time.monotonic() < deadline:
            time.sleep(0.2)

        # (2) Evacuation: pin some VMs to lab-1, then maintenance on lab-1.
        evac = {f"e{i:02d}" for i in range(args.evacuate)}
        api.apply(
            [vm(n, image, ["lab-1", "lab-2"]) for n in sorted(evac)]
            + [{**d, "spec": {**d["spec"], "maintenance": True}} for d in docs if d["metadata"]["name"] == "lab-2"]
        )
        wait_all(evac, uris, "lab-1", timeout=300)
        api.apply([{**d, "spec": {**d["spec"], "maintenance": False}} for d in docs if d["kind"] == "Host"])
        time.sleep(5)  # guests booted: idle guests are evacuated
        sent = time.monotonic()
        api.apply(
            [
                {**d, "spec": {**d["spec"], "maintenance": d["metadata"]["name"] == "lab-1"}}
                for d in docs
                if d["kind"] == "Host"
            ]
        )
        moved = wait_all(evac, uris, "lab-2", timeout=600)
        total = time.monotonic() - sent
        per_vm = list(moved.values())
        print(
            f"(2) evacuation of lab-1 running {args.evacuate} VMs (maintenance: true): all on lab-2 after "
            f"{total:.1f} s; per VM p50 {statistics.median(per_vm):.1f} s, p95 {pct(per_vm, 95):.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
