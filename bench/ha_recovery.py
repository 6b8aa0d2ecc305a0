"""Issue 14: HA recovery time on lab hosts (root only): a host running HA VMs is powered off; how long until
each of its HA VMs runs on another host.

    python bench/ha_recovery.py [--n 10] [--grace 10] [--vms 2]

Starts its own lab (3 hosts, virtlockd), etcd and `virtplane server --lab-dir` (the lab power agent fences),
a cluster with `ha.hostGracePeriodSeconds: --grace`, and `--vms` HA VMs (the busybox test guest). Per trial:
the host running most of them is powered off (SIGKILL of its libvirtd and QEMUs, like pulling the plug);
the clock runs from there until `virsh list` on another host shows each HA VM (polled every 50 ms). Then the
host is powered on, and the next trial starts once everything is Ready and each VM runs once.
Beside it in the same run: the grace period (the floor: nothing may happen before it) and the time plain
`virsh create` takes to start a copy of the same guest on a lab host (the restart's own cost).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import foreign_domain, lab_with_server, load_note, pct


def running(uri: str) -> set[str]:
    done = subprocess.run(["virsh", "-c", uri, "list", "--name"], capture_output=True, text=True, check=False)
    return {line.strip() for line in done.stdout.splitlines() if line.strip()} if done.returncode == 0 else set()


def vm(name: str, image: Any, priority: int) -> dict[str, Any]:
    return {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"cluster": "lab", "cpu": {"cores": 1}, "memory": {"size": "128Mi"},
                     "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline},
                     "highAvailability": {"enabled": True, "priority": priority}}}


def wait(what: str, probe: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def raw_start(uri: str, xml: str, work: Path, n: int = 3) -> list[float]:
    """Seconds `virsh create` of a foreign copy of the guest takes (started, then destroyed), n times."""
    path = work / "rawha.xml"
    path.write_text(ET.tostring(foreign_domain(xml, "rawha"), encoding="unicode"))
    took = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run(["virsh", "-c", uri, "create", str(path)], capture_output=True, check=True)
        took.append(time.monotonic() - t0)
        subprocess.run(["virsh", "-c", uri, "destroy", "rawha"], capture_output=True, check=False)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--grace", type=int, default=10)
    ap.add_argument("--vms", type=int, default=2)
    args = ap.parse_args()
    print(load_note())
    with lab_with_server("bench-ha-", 3, "--lab-dir", "{lab}", lock_manager=True) as run:
        api, uris, lab = run.api, run.uris, run.lab
        cluster = {"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": "lab"},
                   "spec": {"ha": {"hostGracePeriodSeconds": args.grace, "fencing": True}}}
        api.apply([cluster, *run.docs])
        wait("hosts Ready", lambda: all((api.get("hosts", h).get("status") or {}).get("phase") == "Ready"
                                        for h in uris), 120)
        names = [f"ha{i}" for i in range(args.vms)]
        api.apply([vm(n, run.image, 90 - i) for i, n in enumerate(names)])

        def where() -> dict[str, list[str]]:
            per_host = {h: running(u) for h, u in uris.items()}
            return {n: [h for h, r in per_host.items() if n in r] for n in names}

        wait("HA VMs running", lambda: all(len(h) == 1 for h in where().values()), 180)
        first = next(iter(where().values()))[0]
        xml = subprocess.run(["virsh", "-c", uris[first], "dumpxml", names[0]], capture_output=True, text=True,
                             check=True).stdout
        raw = raw_start(uris[first], xml, run.work)
        recovery: list[float] = []
        for trial in range(args.n):
            placed = where()
            victim = max(uris, key=lambda h: sum(h in hs for hs in placed.values()))
            mine = [n for n, hs in placed.items() if victim in hs]
            others = {h: u for h, u in uris.items() if h != victim}
            lab.power_off(victim)
            t0 = time.monotonic()
            seen: dict[str, float] = {}
            while len(seen) < len(mine):
                if time.monotonic() - t0 > 300:
                    raise SystemExit(f"trial {trial + 1}: {sorted(set(mine) - set(seen))} not restarted in 300 s")
                per_host = {h: running(u) for h, u in others.items()}
                for n in mine:
                    if n not in seen and any(n in r for r in per_host.values()):
                        seen[n] = time.monotonic() - t0
                time.sleep(0.05)
            recovery += seen.values()
            print(f"trial {trial + 1}: {victim} off; " + ", ".join(f"{n} {t:.1f} s" for n, t in sorted(seen.items())),
                  flush=True)
            lab.power_on(victim)
            wait(f"{victim} Ready", lambda v=victim: (api.get("hosts", v).get("status") or {}).get("phase") == "Ready",
                 120)
            wait("each HA VM once", lambda: all(len(h) == 1 for h in where().values()), 120)
        print()
        print(f"HA recovery, power-off -> running elsewhere, n={len(recovery)} ({args.n} trials x VMs on the host)")
        print(f"  p50 {pct(recovery, 50):.1f} s   p95 {pct(recovery, 95):.1f} s   max {max(recovery):.1f} s")
        print(f"  grace period configured: {args.grace} s (nothing may happen before it)")
        print(f"  plain `virsh create` of a copy of the guest, same run: p50 {pct(raw, 50):.2f} s (n={len(raw)})")
        print(f"  over the floor (p50 - grace - raw start): {pct(recovery, 50) - args.grace - pct(raw, 50):.1f} s")
        print(f"  accelerator: {run.accel}; {load_note()}")


if __name__ == "__main__":
    main()
