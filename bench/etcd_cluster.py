"""Issue 13: the store and the controllers on a 3-member etcd cluster on loopback, members killed under load.

    python bench/etcd_cluster.py [--n 10000] [--vms 1000] [--hosts 10]

(a) Store.apply of --n VirtualMachine specs: one member vs three (same run, ratio).
(b) the same apply on three members with member 0 (the one the client's channel picked first) SIGKILLed
    half way through the time the apply took in (a): time to all stored (attempts: a failed apply is
    retried whole, as a user would), keys counted with etcdctl on a survivor.
(c) an in-process Manager on the 3-member cluster (member 0 restarted and healthy again): --vms VMs on
    --hosts test-driver hosts, the raft leader SIGKILLed when 30 % are Ready; apply -> all Ready against
    a run of as many VMs with no kill before it (same process, same cluster), defineXML/start per VM.
Every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cluster_doc, host_doc, load_note, ratio, stop_on_sigterm, vm_doc

from controller.controllers.registry import default_registry
from controller.controllers.vm import FINALIZER
from controller.runtime.manager import Manager, ManagerOptions
from controller.server.etcd import EmbeddedEtcd, EtcdCluster
from controller.store import Store, StoreUnavailable
from specs.kinds import parse_resource
from specs.vm import VirtualMachineStatus

ETCDCTL = "/usr/bin/etcdctl"


def etcdctl(endpoint: str, *args: str) -> str:
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run([ETCDCTL, f"--endpoints={endpoint}", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=True).stdout


def count_keys(endpoint: str, prefix: str) -> int:
    return int(json.loads(etcdctl(endpoint, "get", "--prefix", prefix, "--keys-only", "-w", "json"))["count"])


def raft_leader(cluster: EtcdCluster) -> EmbeddedEtcd:
    live = [m for m in cluster.members if m.running]
    status = json.loads(etcdctl(",".join(m.endpoint for m in live), "endpoint", "status", "-w", "json"))
    by_id = {s["Status"]["header"]["member_id"]: s["Endpoint"] for s in status}
    return next(m for m in live if m.endpoint == by_id[status[0]["Status"]["leader"]])


def vms(n: int, prefix: str, finalizer: bool = False) -> list:
    out = []
    for i in range(n):
        doc = vm_doc(i)
        doc["metadata"]["name"] = f"{prefix}-{i:05d}"
        if finalizer:
            doc["metadata"]["finalizers"] = [FINALIZER]  # what the API adds at create
        out.append(parse_resource(doc))
    return out


async def connect(endpoints: list[str], limits: EmbeddedEtcd) -> Store:
    return await Store.connect(endpoints, max_txn_ops=limits.max_txn_ops, max_request_bytes=limits.max_request_bytes)


async def timed_apply(store: Store, objs: list, cid: str) -> float:
    t0 = time.perf_counter()
    await store.apply(objs, correlation_id=cid)
    return time.perf_counter() - t0


async def part_a_b(args: argparse.Namespace, base: Path, cluster: EtcdCluster) -> None:
    with EmbeddedEtcd(base / "single") as single:
        store = await connect([single.endpoint], single)
        t_one = await timed_apply(store, vms(args.n, "a1"), "a-one")
        await store.close()
    store = await connect(cluster.endpoints, cluster.members[0])
    t_three = await timed_apply(store, vms(args.n, "a3"), "a-three")
    print(f"(a) Store.apply of {args.n} VMs: 1 member {t_one:.2f} s ({args.n / t_one:,.0f} obj/s); "
          f"3 members {t_three:.2f} s ({args.n / t_three:,.0f} obj/s) -> 3/1 = {ratio(t_three, t_one)}")

    # (b) kill member 0 once the apply's first batch is committed (watched from member 2)
    watcher = await connect([cluster.members[2].endpoint], cluster.members[2])
    rev0 = await watcher.revision()
    objs = vms(args.n, "b3")
    attempts, errors = 0, []
    t0 = time.perf_counter()
    task = asyncio.create_task(store.apply(objs, correlation_id="b-kill"))
    await asyncio.sleep(t_three / 2)  # half way through what the same apply took in (a): in flight
    killed_at = time.perf_counter() - t0
    committed = await watcher.revision() > rev0
    cluster.members[0].kill()
    while True:
        attempts += 1
        try:
            await task
            break
        except StoreUnavailable as e:
            errors.append(str(e).split(":")[-1].strip())
            task = asyncio.create_task(store.apply(objs, correlation_id=f"b-retry-{attempts}"))
    took = time.perf_counter() - t0
    stored = count_keys(cluster.members[2].endpoint, "/virtplane/specs/VirtualMachine/b3-")
    print(f"(b) apply of {args.n} with member 0 SIGKILLed {killed_at * 1e3:.0f} ms in (committed then: {committed}): "
          f"all stored after {took:.2f} s, {attempts} attempt(s) {errors or ''}; etcdctl on member 2 counts "
          f"{stored}/{args.n} ({'PASS' if stored == args.n else 'FAIL'})")
    await watcher.close()
    await store.close()
    cluster.members[0].start()


async def converge(manager: Manager, store: Store, objs: list, kill: EtcdCluster | None) -> tuple[float, str]:
    names = [o.metadata.name for o in objs]

    def ready() -> int:
        st = manager.cache.status["VirtualMachine"]
        return sum(1 for n in names if isinstance(s := st.get(n), VirtualMachineStatus) and s.phase == "Running")

    t0 = time.perf_counter()
    while True:
        try:
            await store.apply(objs, correlation_id="c")
            break
        except StoreUnavailable:
            await asyncio.sleep(0.2)
    note = ""
    killed_at = 0.0
    lapses: list[float] = []  # seconds after the kill at which this replica did not lead the cluster
    while ready() < len(names):
        if killed_at and not manager.elector.leads("bench"):
            lapses.append(time.perf_counter() - killed_at)
        if kill is not None and not note and ready() >= 0.3 * len(names):
            leader = raft_leader(kill)
            leader.kill()
            killed_at = time.perf_counter()
            note = f"raft leader {leader.name} killed at {ready()} Ready, {time.perf_counter() - t0:.2f} s"
        await asyncio.sleep(0.02)
        if time.perf_counter() - t0 > 600:
            raise TimeoutError(f"{ready()}/{len(names)} Ready after 600 s")
    if lapses:
        note += f"; not leading from {lapses[0]:.2f} s to {lapses[-1]:.2f} s after the kill"
    return time.perf_counter() - t0, note


async def part_c(args: argparse.Namespace, base: Path, cluster: EtcdCluster) -> None:
    store = await connect(cluster.endpoints, cluster.members[0])
    await store.kv.delete_prefix(b"/virtplane/")  # (a) and (b)'s specs are not for the controllers
    infra = [parse_resource(cluster_doc())] + [parse_resource(host_doc(h)) for h in range(args.hosts)]
    await store.apply(infra, correlation_id="c-infra")
    manager = Manager(store, default_registry(), ManagerOptions(data_dir=base / "mgr"))
    task = asyncio.create_task(manager.run())
    try:
        deadline = time.perf_counter() + 120
        while not (len(manager.hosts.hosts) == args.hosts and all(r.ready and r.last_listed
                                                                   for r in manager.hosts.hosts.values())):
            if time.perf_counter() > deadline:
                raise TimeoutError(f"hosts not listed: {[(h, r.ready, r.last_listed) for h, r in manager.hosts.hosts.items()]}")
            await asyncio.sleep(0.05)
        print("  (c) hosts up", flush=True)
        calls0 = Counter[str]()
        for r in manager.hosts.hosts.values():
            calls0.update(r.conn.calls)
        t_base, _ = await converge(manager, store, vms(args.vms, "c-base", True), None)
        t_kill, note = await converge(manager, store, vms(args.vms, "c-kill", True), cluster)
        calls = Counter[str]()
        for r in manager.hosts.hosts.values():
            calls.update(r.conn.calls)
        calls -= calls0
        n = 2 * args.vms
        print(f"(c) {args.vms} VMs on {args.hosts} test-driver hosts, in-process Manager on 3 members: no kill "
              f"{t_base:.2f} s; {note}: all Ready after {t_kill:.2f} s ({ratio(t_kill, t_base)}); "
              f"defineXML {calls['defineXML'] / n:.2f}/VM, start {calls['start'] / n:.2f}/VM "
              f"({'PASS' if calls['defineXML'] == calls['start'] == n else 'FAIL'}: exactly one each)")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def main_async(args: argparse.Namespace, base: Path) -> None:
    with EtcdCluster(base / "etcd3", 3) as cluster:
        await part_a_b(args, base, cluster)
        await part_c(args, base, cluster)


def main() -> None:
    stop_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--vms", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=10)
    args = ap.parse_args()
    print(f"# bench/etcd_cluster.py --n {args.n} --vms {args.vms} --hosts {args.hosts}; {load_note()}")
    with tempfile.TemporaryDirectory(prefix="vp-bench-etcd3-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))
    print(f"# {load_note()}")


if __name__ == "__main__":
    main()
