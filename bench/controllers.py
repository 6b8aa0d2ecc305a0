"""Issue 3: controllers on simulated hosts, in-process (Manager on a Store on its own etcd).

    python bench/controllers.py [--vms 10000] [--hosts 100] [--paced 100] [--rate 10] [--workers 32]

(d) apply --vms VMs (one Store.apply, as the API does) -> all Ready: total time, per-VM apply->Ready
    p50/p95 (Ready condition lastTransitionTime), etcd writes per VM (revision delta; split by key
    version: status writes, spec rewrites = finalizer adds, events), libvirt calls per VM
    (HostConnection.calls, read in-process), peak RSS of this process (= the controller + the
    in-process test-driver hosts).
    Baseline, same run: a raw libvirt loop that defines+starts the same domain XML on --hosts
    test-driver connections, one thread.
(e) resync_all() with nothing changed, until the queue drains: time; asserts zero libvirt mutations
    and zero etcd writes to specs/status/events.
(f) --paced VMs created at --rate per second (one Store.apply each) on the loaded system:
    creation -> Ready p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import libvirt
from common import cluster_doc, host_doc, load_note, pct, ratio, start_etcd, stop_on_sigterm, vm_doc

from controller.adapters.libvirt import codec as lvcodec
from controller.common import gcpolicy
from controller.controllers.registry import default_registry
from controller.controllers.vm import FINALIZER as VM_FINALIZER
from controller.runtime.manager import Manager, ManagerOptions
from controller.store import Store
from specs.kinds import parse_resource
from specs.vm import VirtualMachineStatus

MUTATIONS = {
    "defineXML",
    "start",
    "shutdown",
    "destroy",
    "undefine",
    "attachDevice",
    "detachDevice",
    "setVcpus",
    "setMemory",
    "create_volume",
    "delete_volume",
    "copy_volume",
    "resize_volume",
    "delete_network",
    "ensure_network",
    "ensure_pool",
}


def with_api_defaults(obj, args: argparse.Namespace):
    """What POST /api/v1/apply adds when controllers run (ApiContext.default_finalizers): the VM
    finalizer at create, so the controller need not add it (one write and one reconcile less)."""
    if args.no_api_finalizers:
        return obj
    return obj.model_copy(update={"metadata": obj.metadata.model_copy(update={"finalizers": (VM_FINALIZER,)})})


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cur_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def calls(m: Manager) -> Counter[str]:
    total: Counter[str] = Counter()
    for rt in m.hosts.hosts.values():
        total.update(rt.conn.calls)
    return total


def ready_at(st: object) -> datetime | None:
    if not isinstance(st, VirtualMachineStatus) or st.phase != "Running":
        return None
    for c in st.conditions:
        if c.type == "Ready" and c.status == "True":
            return c.lastTransitionTime
    return None


def count_ready(m: Manager, names: list[str]) -> int:
    status = m.cache.status["VirtualMachine"]
    return sum(1 for n in names if ready_at(status.get(n)) is not None)


async def wait_until(pred, timeout: float, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(every)
    return pred()


async def wait_drained(m: Manager, timeout: float) -> bool:
    def idle() -> bool:
        q = m.queue.metrics()
        return q.depth == 0 and q.processing == 0  # delayed re-checks (host heartbeats) may stay waiting

    # Require idleness twice in a row (a finishing key may re-add itself).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if idle():
            await asyncio.sleep(0.05)
            if idle():
                return True
        await asyncio.sleep(0.02)
    return False


async def key_versions(store: Store, prefix: bytes, since: int) -> tuple[int, int]:
    """(keys modified after ``since``, sum of their versions) — version = writes since creation."""
    kvs, _ = await store.kv.range_prefix(prefix)
    mod = [kv for kv in kvs if kv.mod_revision > since]
    return len(mod), sum(int(kv.version) for kv in mod)


async def count_created(store: Store, prefix: bytes, since: int) -> int:
    kvs, _ = await store.kv.range_prefix(prefix)
    return sum(1 for kv in kvs if kv.create_revision > since)


def raw_libvirt(base: Path, hosts: int, n: int, xml: str, cpus: int, mem_gib: int) -> float:
    conns = []
    for h in range(hosts):
        path = base / f"raw-host-{h}.xml"
        path.write_text(lvcodec.render_test_host(cpus=cpus, memory_kib=mem_gib << 20))
        conns.append(libvirt.open(f"test://{path}"))
    body = xml
    import re

    body = re.sub(r"<uuid>[^<]*</uuid>", "", body)
    rss0 = current_rss_mib()
    t0 = time.perf_counter()
    for i in range(n):
        dom = conns[i % hosts].defineXML(body.replace("@@NAME@@", f"raw-{i:05d}"))
        dom.create()
    took = time.perf_counter() - t0
    RAW_RSS["test_driver_mib"] = current_rss_mib() - rss0  # what libvirt's in-process test driver holds
    for c in conns:
        c.close()
    return took


RAW_RSS: dict[str, float] = {}


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main_async(args: argparse.Namespace, base: Path) -> None:
    etcd = start_etcd(base)
    store = await Store.connect([etcd.endpoint], max_txn_ops=etcd.max_txn_ops, max_request_bytes=etcd.max_request_bytes)
    manager = Manager(store, default_registry(),
                      ManagerOptions(data_dir=base / "mgr", workers=args.workers, lease_ttl=args.lease_ttl))
    task: asyncio.Task[None] | None = None
    try:
        cpus, mem = 64, max(16, (args.vms // args.hosts + 1) * 64 // 1024 * 2 + 16)
        infra = [parse_resource(cluster_doc())] + [
            parse_resource(host_doc(h, cpus=cpus, memory_gib=mem)) for h in range(args.hosts)
        ]
        await store.apply(infra, correlation_id="bench-infra")
        rss0 = cur_rss_mib()
        task = asyncio.create_task(manager.run())
        t0 = time.perf_counter()
        ok = await wait_until(
            lambda: len(manager.hosts.hosts) == args.hosts and all(r.ready for r in manager.hosts.hosts.values()), 120
        )
        print(
            f"  {args.hosts} hosts Ready: {ok} in {time.perf_counter() - t0:.2f} s (host memory {mem} GiB, {cpus} cpus)"
        )
        await wait_drained(manager, 60)
        rss_hosts = cur_rss_mib()

        # ---- (d) mass create
        names = [f"vm-{i:05d}" for i in range(args.vms)]
        vms = [with_api_defaults(parse_resource(vm_doc(i)), args) for i in range(args.vms)]
        rev0 = await store.revision()
        calls0 = calls(manager)
        counters0 = Counter(manager.rt.counters) if manager.rt else Counter()
        reconciles0 = manager.reconciles["VirtualMachine"]
        cpu0 = cpu_s()
        wall0 = datetime.now(UTC)
        t0 = time.perf_counter()
        res = await store.apply(vms, correlation_id="bench-mass")
        t_apply = time.perf_counter() - t0
        peak_cur = 0.0
        last_print = time.perf_counter()

        def all_ready() -> bool:
            nonlocal peak_cur, last_print
            peak_cur = max(peak_cur, cur_rss_mib())
            if time.perf_counter() - last_print > 10:
                last_print = time.perf_counter()
                phases = Counter(getattr(manager.cache.status["VirtualMachine"].get(n), "phase", None) for n in names)
                el = manager.elector
                print(
                    f"    ... leads(bench)={el.leads('bench')} held={sorted(el.held)} "
                    f"valid_for={el._valid_until - el.clock():.1f}s",
                    flush=True,
                )
                print(
                    f"    ... {count_ready(manager, names)} Ready after {last_print - t0:.0f} s; phases "
                    f"{dict(phases)}; queue {manager.queue.metrics()}",
                    flush=True,
                )
            return count_ready(manager, names) == len(names)

        ok = await wait_until(all_ready, args.timeout, every=1.0)
        t_total = time.perf_counter() - t0
        n_ready = count_ready(manager, names)
        await wait_drained(manager, 30)
        cpu_d = cpu_s() - cpu0
        rev1 = await store.revision()
        calls_d = calls(manager) - calls0
        counters_d = Counter(manager.rt.counters) - counters0 if manager.rt else Counter()
        lat = sorted(
            (ready_at(manager.cache.status["VirtualMachine"].get(n)) - wall0).total_seconds()
            for n in names
            if ready_at(manager.cache.status["VirtualMachine"].get(n)) is not None
        )
        _n_status_keys, status_writes = await key_versions(store, b"/virtplane/status/VirtualMachine/", rev0)
        n_spec_keys, spec_versions = await key_versions(store, b"/virtplane/specs/VirtualMachine/", rev0)
        events = await count_created(store, b"/virtplane/events/", rev0)
        _host_status_keys, _host_status = await key_versions(store, b"/virtplane/status/Host/", rev0)
        writes = rev1 - rev0
        n = max(1, len(names))
        key_writes = status_writes + spec_versions + events
        print(
            f"\n(d) {args.vms} VMs on {args.hosts} simulated hosts, apply -> all Ready "
            f"({args.workers} workers, in-process Manager)"
        )
        print(
            f"  all Ready: {ok} ({n_ready}/{len(names)}); apply (1 Store.apply, {res.transactions} txn) "
            f"{t_apply:.2f} s; total apply->all Ready {t_total:.2f} s "
            f"-> {len(names) / t_total:.0f} VMs/s   target <= 60 s: {'PASS' if ok and t_total <= 60 else 'MISS'}"
        )
        if lat:
            print(f"  per-VM apply->Ready: p50 {pct(lat, 50):.2f} s  p95 {pct(lat, 95):.2f} s  max {lat[-1]:.2f} s")
        print(
            f"  etcd: revision delta {writes} ({writes / n:.2f}/VM; one txn = one revision); key writes for VMs "
            f"{key_writes} = {key_writes / n:.2f}/VM: VM status writes "
            f"{status_writes} ({status_writes / n:.2f}/VM, target <= 2: {'PASS' if status_writes / n <= 2 else 'MISS'}); "
            f"VM spec writes {spec_versions} ({(spec_versions - n_spec_keys) / n:.2f} rewrites/VM after create = finalizer adds); "
            f"events {events} ({events / n:.2f}/VM)"
        )
        print(f"  runtime counters: {dict(counters_d)}")
        rec = manager.reconciles["VirtualMachine"] - reconciles0
        print(f"  VM reconciles {rec} = {rec / n:.2f}/VM (target 1)")
        api_calls = sum(calls_d.values())
        print(
            f"  libvirt API calls {api_calls} = {api_calls / n:.2f}/VM; defineXML {calls_d['defineXML'] / n:.2f}/VM, "
            f"start {calls_d['start'] / n:.2f}/VM (target exactly 1 + 1: "
            f"{'PASS' if calls_d['defineXML'] == n and calls_d['start'] == n else 'MISS'})"
        )
        print(f"  by API: {dict(calls_d.most_common())}")
        peak = max(rss_mib(), peak_cur)
        print(
            f"  RSS: before manager {rss0:.0f} MiB, hosts up {rss_hosts:.0f} MiB, peak {peak:.0f} MiB "
            f"(target <= 1024: {'PASS' if peak <= 1024 else 'MISS'}); CPU {cpu_d:.1f} s "
            f"({cpu_d / t_total * 100:.0f}% of one core)"
        )
        xml = ""
        with contextlib.suppress(Exception):
            first = manager.cache.status["VirtualMachine"][names[0]].host
            conn = manager.hosts.hosts[first].conn
            xml = await conn.run(
                "bench-xml", lambda c: c.lookupByName(names[0]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
            xml = xml.replace(f"<name>{names[0]}</name>", "<name>@@NAME@@</name>")

        # ---- idle: nothing to do, what does the controller burn?
        print(f"(idle) measuring for {args.idle:.0f} s (pid {os.getpid()})", flush=True)
        c0, t0 = cpu_s(), time.perf_counter()
        calls_i0 = calls(manager)
        await asyncio.sleep(args.idle)
        idle_cpu = (cpu_s() - c0) / (time.perf_counter() - t0)
        calls_i = calls(manager) - calls_i0
        print(
            f"\n(idle) {args.idle:.0f} s with nothing changed: CPU {idle_cpu * 100:.0f}% of one core; libvirt calls "
            f"{sum(calls_i.values())} ({dict(calls_i.most_common(4))})"
        )

        # ---- (e) resync, nothing changed
        before = {k: v for k, v in manager.cache.status["VirtualMachine"].items()}
        rev_r0 = await store.revision()
        calls_r0 = calls(manager)
        proc0 = manager.queue.metrics().processed
        prof = None
        if args.profile_resync:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        queued = manager.resync_all(changed_only=not args.full_resync)
        t_compare = time.perf_counter() - t0
        drained = await wait_drained(manager, 120)
        t_resync = time.perf_counter() - t0
        kind = "full resync_all() (every key queued)" if args.full_resync else "periodic resync (changed only)"
        print(f"\n(e) {kind}: {queued} keys queued after comparing caches for {t_compare:.2f} s; "
              f"compare+drain {t_resync:.2f} s")
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile_resync)
        rev_r1 = await store.revision()
        calls_rd = calls(manager) - calls_r0
        mut = {k: v for k, v in calls_rd.items() if k in MUTATIONS}
        spec_w = await count_created(store, b"/virtplane/specs/", rev_r0)  # (created; modified below)
        mod_specs, _ = await key_versions(store, b"/virtplane/specs/", rev_r0)
        mod_status, _ = await key_versions(store, b"/virtplane/status/VirtualMachine/", rev_r0)
        mod_host_status, _ = await key_versions(store, b"/virtplane/status/Host/", rev_r0)
        ev = await count_created(store, b"/virtplane/events/", rev_r0)
        keys = manager.queue.metrics().processed - proc0
        from controller.runtime.context import _comparable

        changed = [
            k
            for k, v in manager.cache.status["VirtualMachine"].items()
            if k in before and _comparable(before[k]) != _comparable(v)
        ]
        if changed:
            a, b = _comparable(before[changed[0]]), _comparable(manager.cache.status["VirtualMachine"][changed[0]])
            diff = {f: (a.get(f), b.get(f)) for f in set(a) | set(b) if a.get(f) != b.get(f)}
            print(f"  resync rewrote {len(changed)} VM statuses; e.g. {changed[0]}: {diff}")
        print(
            f"\n(e) resync with nothing changed: {keys} keys processed in {t_resync:.2f} s "
            f"(drained {drained}) target <= 3 s: {'PASS' if drained and t_resync <= 3 else 'MISS'}"
        )
        print(
            f"  libvirt mutations: {sum(mut.values())} {mut or ''} (assert 0: {'PASS' if not mut else 'FAIL'}); "
            f"libvirt reads {sum(calls_rd.values())} ({dict(calls_rd.most_common(6))})"
        )
        print(
            f"  etcd: revision delta {rev_r1 - rev_r0}; specs modified {mod_specs} (created {spec_w}), "
            f"VM status modified {mod_status}, Host status modified {mod_host_status}, events {ev} (assert 0 writes to specs/status/events: "
            f"{'PASS' if mod_specs == mod_status == ev == 0 else 'FAIL'}); other (leases) {rev_r1 - rev_r0 - mod_specs - mod_status - ev - mod_host_status}; Host status writes are the 60 s heartbeat, not caused by the resync"
        )

        # ---- (f) paced creation
        lat_f: list[float] = []
        if args.paced:
            paced = [f"paced-{i:03d}" for i in range(args.paced)]
            created: dict[str, datetime] = {}
            start = time.perf_counter()
            for i, name in enumerate(paced):
                await asyncio.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
                doc = vm_doc(i)
                doc["metadata"]["name"] = name
                created[name] = datetime.now(UTC)
                await store.apply([with_api_defaults(parse_resource(doc), args)], correlation_id=f"bench-paced-{i}")
            ok = await wait_until(lambda: count_ready(manager, paced) == len(paced), 120)
            for name in paced:
                at = ready_at(manager.cache.status["VirtualMachine"].get(name))
                if at is not None:
                    lat_f.append((at - created[name]).total_seconds())
            p95 = pct(lat_f, 95)
            print(
                f"\n(f) {args.paced} VMs created at {args.rate}/s (one Store.apply each) on the loaded system: "
                f"{len(lat_f)} Ready; creation->Ready p50 {pct(lat_f, 50) * 1e3:.0f} ms  p95 {p95 * 1e3:.0f} ms  "
                f"max {max(lat_f) * 1e3:.0f} ms   target p95 <= 1 s: {'PASS' if ok and p95 <= 1 else 'MISS'}"
            )
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.close()
        etcd.stop()

    # ---- baseline: raw libvirt loop, same XML, same number of hosts, after the manager is gone
    if xml:
        raw_s = raw_libvirt(base, args.hosts, args.vms, xml, cpus, mem)
        print(
            f"\nbaseline: raw libvirt defineXML+create of {args.vms} domains on {args.hosts} test-driver "
            f"connections, one thread: {raw_s:.2f} s = {args.vms / raw_s:.0f} VMs/s; the test driver's domains "
            f"grew this process by {RAW_RSS.get('test_driver_mib', 0):.0f} MiB (part of the RSS in (d) too: "
            "simulated hosts live in the controller's process)"
        )
        print(f"  (d) virtplane apply->all Ready / raw = {ratio(t_total, raw_s)}")
        if lat_f:
            per = raw_s / args.vms
            print(
                f"  (f) p95 {pct(lat_f, 95) * 1e3:.0f} ms vs raw define+start of one domain {per * 1e3:.2f} ms "
                f"= {ratio(pct(lat_f, 95), per)}"
            )


def main() -> None:
    stop_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--paced", type=int, default=100)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--idle", type=float, default=10)
    ap.add_argument(
        "--lease-ttl",
        type=int,
        default=10,
        help="ManagerOptions.lease_ttl (product default 10; see RESULTS.md: leadership lapse bug)",
    )
    ap.add_argument(
        "--no-api-finalizers",
        action="store_true",
        help="apply VMs without the finalizer the API sets at create (controller adds it)",
    )
    ap.add_argument("--full-resync", action="store_true", help="(e) queues every key, not only those out of sync")
    ap.add_argument("--profile-resync", default="", help="write a cProfile of the event loop during (e) here")
    ap.add_argument("--default-gc", action="store_true",
                    help="CPython's default collector thresholds, not the server's (controller/common/gcpolicy.py)")
    args = ap.parse_args()
    if not args.default_gc:
        gcpolicy.tune(freeze=True)  # as `virtplane server` does after start-up
    print(
        f"# bench/controllers.py --vms {args.vms} --hosts {args.hosts} --paced {args.paced} "
        f"--rate {args.rate} --workers {args.workers} --lease-ttl {args.lease_ttl}"
        f"{' --default-gc' if args.default_gc else ''}; {load_note()}; threads {threading.active_count()}"
    )
    with tempfile.TemporaryDirectory(prefix="vp-bench-ctl-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))
    print(f"# {load_note()}")


if __name__ == "__main__":
    main()
