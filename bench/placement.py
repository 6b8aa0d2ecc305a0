"""Issue 14: placement at scale on libvirt's test driver (in-process controllers on their own etcd).

    python bench/placement.py [--hosts 500] [--vms 10000] [--workers 32]

Hosts: test:/// connections of 32 CPUs / 64 GiB. VMs of mixed sizes (1-4 vCPUs, 256 MiB-2 GiB) with
placement rules: 20% in anti-affinity groups of 10 (each on a different host, hard), 20% in affinity groups
of 4 (same host when it fits, soft), the rest free. Measures apply -> every VM Running: placements per second;
then from the VMs' status: the max/min host load (memory) ratio and spread, anti-affinity violations (must
be 0) and how many affinity groups ended on one host.
Baseline in the same run: the pure scheduler (reconcilers.scheduler.place) placing the same requests one
after another against the same hosts, with allocations updated after each (no etcd, no libvirt).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from common import load_note, start_etcd, stop_on_sigterm

from controller.controllers.registry import default_registry
from controller.runtime.manager import Manager, ManagerOptions
from controller.store import Store
from reconcilers.domain import HostName
from reconcilers.scheduler import ClusterPolicy, HostView, Request, place
from specs.kinds import parse_resource
from specs.quantity import parse_quantity
from specs.vm import VirtualMachineStatus

CPUS, MEM_GIB = 32, 64


def docs(hosts: int, vms: int, seed: int) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    infra: list[dict] = [{"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": "place"},
                          "spec": {"scheduling": {"policy": "EvenlyDistributed", "cpuOvercommit": 4.0,
                                                  "balancing": {"enabled": False}}}}]
    infra += [{"apiVersion": "virtplane.io/v1", "kind": "Host", "metadata": {"name": f"h{i:03d}"},
               "spec": {"cluster": "place", "uri": f"test:///default?cpus={CPUS}&memory={MEM_GIB}"}}
              for i in range(hosts)]
    out = []
    for i in range(vms):
        placement: dict[str, str] = {}
        kind = i % 5
        if kind == 0:
            placement["antiAffinityGroup"] = f"anti-{i // 50}"  # groups of 10 (every 5th VM, 50 apart)
        elif kind == 1:
            placement["affinityGroup"] = f"aff-{i // 20}"  # groups of 4
        out.append({"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": f"v{i:05d}"},
                    "spec": {"cluster": "place", "cpu": {"cores": rng.choice((1, 1, 2, 4))},
                             "memory": {"size": rng.choice(("256Mi", "512Mi", "1Gi", "2Gi"))},
                             "placement": placement}})
    return infra, out


def request(doc: dict) -> Request:
    p = doc["spec"]["placement"]
    return Request(vm=doc["metadata"]["name"], cluster="place", cpus=doc["spec"]["cpu"]["cores"],
                   memory_bytes=parse_quantity(doc["spec"]["memory"]["size"]),
                   affinity_group=p.get("affinityGroup"), anti_affinity_group=p.get("antiAffinityGroup"))


def pure_baseline(hosts: int, vm_docs: list[dict]) -> tuple[float, dict[str, str]]:
    views = {f"h{i:03d}": HostView(HostName(f"h{i:03d}"), "place", True, False, {}, CPUS, MEM_GIB << 30)
             for i in range(hosts)}
    policy = ClusterPolicy("EvenlyDistributed", 4.0, 1.0)
    where = {}
    t0 = time.perf_counter()
    for doc in vm_docs:
        req = request(doc)
        chosen = place(req, list(views.values()), policy).host
        if chosen is None:
            continue
        h = views[chosen]
        groups = h.groups | {g for g in (req.affinity_group, req.anti_affinity_group) if g}
        views[chosen] = dataclasses.replace(h, allocated_cpus=h.allocated_cpus + req.cpus,
                                            allocated_memory_bytes=h.allocated_memory_bytes + req.memory_bytes,
                                            vm_count=h.vm_count + 1, groups=frozenset(groups))
        where[req.vm] = chosen
    return time.perf_counter() - t0, where


def quality(where: dict[str, str], vm_docs: list[dict], hosts: int) -> str:
    mem: Counter[str] = Counter({f"h{i:03d}": 0 for i in range(hosts)})
    anti: dict[str, list[str]] = defaultdict(list)
    aff: dict[str, set[str]] = defaultdict(set)
    for doc in vm_docs:
        host = where.get(doc["metadata"]["name"])
        if host is None:
            continue
        mem[host] += parse_quantity(doc["spec"]["memory"]["size"])
        p = doc["spec"]["placement"]
        if "antiAffinityGroup" in p:
            anti[p["antiAffinityGroup"]].append(host)
        if "affinityGroup" in p:
            aff[p["affinityGroup"]].add(host)
    loads = [m / (MEM_GIB << 30) * 100 for m in mem.values()]
    violations = sum(len(h) - len(set(h)) for h in anti.values())
    together = sum(1 for h in aff.values() if len(h) == 1)
    return (f"placed {len(where)}; host memory load min {min(loads):.1f}% max {max(loads):.1f}% "
            f"(max/min {max(loads) / max(min(loads), 1e-9):.2f}, spread {max(loads) - min(loads):.1f} points); "
            f"anti-affinity violations {violations}; affinity groups on one host {together}/{len(aff)}")


async def run(args: argparse.Namespace, base: Path) -> None:
    infra, vm_docs = docs(args.hosts, args.vms, args.seed)
    took_pure, where_pure = pure_baseline(args.hosts, vm_docs)
    etcd = start_etcd(base)
    store = await Store.connect([etcd.endpoint], max_txn_ops=etcd.max_txn_ops, max_request_bytes=etcd.max_request_bytes)
    manager = Manager(store, default_registry(), ManagerOptions(data_dir=base / "mgr", workers=args.workers))
    task = None
    try:
        await store.apply([parse_resource(d) for d in infra], correlation_id="bench-infra")
        task = asyncio.create_task(manager.run())
        deadline = time.monotonic() + 300
        while not (len(manager.hosts.hosts) == args.hosts and all(r.ready for r in manager.hosts.hosts.values())):
            if time.monotonic() > deadline:
                raise SystemExit("hosts not Ready in 300 s")
            await asyncio.sleep(0.2)
        print(f"{args.hosts} hosts Ready; {load_note()}", flush=True)
        names = [d["metadata"]["name"] for d in vm_docs]
        t0 = time.perf_counter()
        await store.apply([parse_resource(d) for d in vm_docs], correlation_id="bench-place")

        def running() -> dict[str, str]:
            out = {}
            for n in names:
                s = manager.cache.status["VirtualMachine"].get(n)
                if isinstance(s, VirtualMachineStatus) and s.phase == "Running" and s.host:
                    out[n] = s.host
            return out

        deadline = time.monotonic() + args.timeout
        while len(where := running()) < len(names):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        took = time.perf_counter() - t0
        print(f"\nplacement at scale: {args.vms} VMs with affinity rules on {args.hosts} test-driver hosts")
        print(f"  virtplane (apply -> all Running): {took:.1f} s, {len(where) / took:.0f} placements/s")
        print(f"    {quality(where, vm_docs, args.hosts)}")
        print(f"  pure scheduler, same requests, same run: {took_pure:.1f} s, {len(where_pure) / took_pure:.0f} "
              f"placements/s (virtplane/pure time {took / took_pure:.1f}x)")
        print(f"    {quality(where_pure, vm_docs, args.hosts)}")
        print(f"  {load_note()}")
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await store.close()
        etcd.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=500)
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-place-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
