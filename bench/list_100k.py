"""Issue 9: a 100,000-object list through the API (streamed, and paged by the SDK) beside the same range
read raw from etcd, with the server's RSS and /healthz latency while the list is served.

    python bench/list_100k.py [--n 100000] [--concurrent 4] [--before /work/main/.venv/bin/virtplane]

Starts its own etcd (filled through the store, in bounded transactions) and a `virtplane server
--no-controllers` on it; stops both at the end, by PID. Series:

  raw etcd     gRPC range of /virtplane/specs/VirtualMachine/ in pages of 5,000 (bytes only, no decoding)
  api stream   GET /api/v1/virtualmachines (no limit: streamed page by page), read and JSON-parsed
  sdk pages    Client.list_at (limit=1000 + continue)
  concurrent   --concurrent streamed lists at once
With ``--before BINARY`` the same list is also served once by that build's server on the same etcd (then
etcd listens on loopback TCP, which older builds need): the before/after in one run.
During each API series (and 3 s of idling, the baseline) a separate process asks /healthz every 20 ms; its
max and p99 are printed. RSS is the
server's VmRSS before and VmHWM (peak) after each series.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_note, pct, ratio, start_server, stop_on_sigterm, vm_doc

from controller.client.sdk import Client
from controller.server.etcd import EmbeddedEtcd
from controller.store import Store, codec
from specs.kinds import parse_resource


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def fill(endpoint: str, n: int) -> None:
    store = await Store.connect([endpoint])
    try:
        objects = [parse_resource(vm_doc(i)) for i in range(n)]
        for start in range(0, n, 10_000):
            await store.apply(objects[start : start + 10_000], correlation_id="bench-fill")
    finally:
        await store.close()


async def raw_range(endpoint: str) -> tuple[float, int, int]:
    store = await Store.connect([endpoint])
    try:
        t0 = time.perf_counter()
        kvs, _ = await store.kv.range_prefix(codec.kind_prefix("VirtualMachine"))
        elapsed = time.perf_counter() - t0
        return elapsed, len(kvs), sum(len(kv.value) for kv in kvs)
    finally:
        await store.close()


PROBE = """
import sys, time, urllib.request
url = sys.argv[1]
while True:
    t0 = time.perf_counter()
    urllib.request.urlopen(url + "/healthz", timeout=60).read()
    print(f"{(time.perf_counter() - t0) * 1000:.2f}", flush=True)
    time.sleep(0.02)
"""


class HealthProbe:
    """/healthz every 20 ms from a process of its own while a series runs; latencies in ms. (A thread of
    this process would measure this process too: the lists' json.loads holds its GIL for seconds.)"""

    def __init__(self, url: str) -> None:
        self.url, self.latencies = url, []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HealthProbe:
        self._proc = subprocess.Popen([sys.executable, "-c", PROBE, self.url], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=30)
        self.latencies = [float(line) for line in out.split()]


def stream_list(url: str, token: str) -> int:
    with httpx.Client(timeout=600) as http:
        r = http.get(f"{url}/api/v1/virtualmachines", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return len(json.loads(r.content)["items"])


def series(name: str, server, run: Callable[[], int], n: int) -> dict:  # type: ignore[no-untyped-def]
    pid = server.proc.pid
    before = rss_kib(pid, "VmRSS")
    reset_peak(pid)
    with HealthProbe(server.url) as probe:
        t0 = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - t0
    assert count == n, f"{name}: {count} objects, expected {n}"
    lat = probe.latencies
    return {"name": name, "s": elapsed, "rss0": before // 1024, "peak": rss_kib(pid, "VmHWM") // 1024,
            "hz_max": max(lat), "hz_p99": pct(lat, 99), "hz_n": len(lat)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--before", help="virtplane binary of the build to compare with (e.g. main's)")
    args = parser.parse_args()
    stop_on_sigterm()
    print(f"# {load_note()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="vp-bench-list-"))
    etcd = EmbeddedEtcd(work / "etcd", listen="tcp" if args.before else "unix")
    etcd.start()
    server = before = None
    try:
        t0 = time.perf_counter()
        asyncio.run(fill(etcd.endpoint, args.n))
        print(f"# filled {args.n} VirtualMachines in {time.perf_counter() - t0:.1f} s", flush=True)
        raw_s, raw_n, raw_bytes = asyncio.run(raw_range(etcd.endpoint))
        assert raw_n == args.n
        server = start_server(work / "server", etcd, "--no-controllers")
        token = server.token
        def idle() -> int:  # /healthz with nothing else to do: what the machine's load alone costs
            time.sleep(3)
            return args.n

        rows = [series("idle (no list; /healthz baseline)", server, idle, args.n)]
        rows.append(series("api stream (no limit)", server, lambda: stream_list(server.url, token), args.n))

        def sdk() -> int:
            with Client(server.url, token, timeout=600) as api:
                return len(api.list_at("virtualmachines")[0])

        rows.append(series("sdk pages (limit 1000)", server, sdk, args.n))

        def concurrent() -> int:
            counts: list[int] = []
            threads = [threading.Thread(target=lambda: counts.append(stream_list(server.url, token)))
                       for _ in range(args.concurrent)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert counts == [args.n] * args.concurrent, counts
            return args.n

        rows.append(series(f"{args.concurrent} streamed lists at once", server, concurrent, args.n))
        if args.before:
            server.stop()
            before = start_server(work / "before", etcd, "--no-controllers", virtplane=args.before)
            rows.append(series(f"before ({args.before}): one list", before,
                               lambda: stream_list(before.url, before.token), args.n))
        print(f"\nraw etcd range: {raw_s:.2f} s for {raw_n} keys, {raw_bytes / 1e6:.1f} MB of values\n")
        print("| series | time | vs raw etcd | server RSS before → peak | /healthz max | p99 | probes |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['name']} | {r['s']:.2f} s | {ratio(r['s'], raw_s)} | {r['rss0']} → {r['peak']} MiB "
                  f"| {r['hz_max']:.0f} ms | {r['hz_p99']:.0f} ms | {r['hz_n']} |")
        print(f"\n# {load_note()}")
    finally:
        for running in (server, before):
            if running is not None:
                running.stop()
        etcd.stop()


if __name__ == "__main__":
    main()
