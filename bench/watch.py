"""Issue 2 (c): watch latency p50/p99, API watch stream vs raw etcd watch, same etcd, same run.

    python bench/watch.py [--n 1000]

Starts its own etcd and a `virtplane server --no-controllers`; stops both at the end. Three series,
one write at a time (the next write only after the previous one arrived), timed from just before the
write call to the moment the event has been read and JSON-decoded by this client:

  raw      gRPC put of a status value  -> raw etcd gRPC watch on the prefix            (baseline)
  api      the same gRPC put            -> GET /api/v1/watch (JSON lines, httpx stream)
  api-e2e  PUT /api/v1/virtualmachines/NAME (API write) -> GET /api/v1/watch
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aetcd import rpc
from common import load_note, pct, ratio, start_etcd, start_server, stop_on_sigterm, vm_doc

from controller.store import codec
from controller.store._etcd import EtcdKV, op_put, prefix_end
from specs.kinds import parse_resource
from specs.vm import VirtualMachineStatus

NAME = "vm-00000"
KEY = codec.status_key("VirtualMachine", NAME)
RAW_NAME = "vm-raw"
SPEC_KEY = codec.spec_key("VirtualMachine", RAW_NAME)


def spec_value(i: int) -> bytes:
    doc = vm_doc(0)
    doc["metadata"]["name"] = RAW_NAME
    doc["metadata"]["labels"]["seq"] = str(i)
    return codec.encode_resource(parse_resource(doc))


def status_value(i: int) -> bytes:
    return codec.encode_status(VirtualMachineStatus(phase="Pending", correlationId=f"seq-{i}"))


async def raw_series(kv: EtcdKV, n: int) -> list[float]:
    call = kv.open_watch()
    prefix = b"/virtplane/status/VirtualMachine/"
    await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=prefix, range_end=prefix_end(prefix))))
    await call.read()  # created
    out = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            await kv.txn([], [op_put(KEY, status_value(i))])
            while True:
                resp = await call.read()
                hit = [e for e in resp.events if json.loads(e.kv.value).get("correlationId") == f"seq-{i}"]
                if hit:
                    break
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.002)
    finally:
        call.cancel()
    return out


async def api_lines(
    client: httpx.AsyncClient, queue: asyncio.Queue[tuple[float, dict[str, Any]]], ready: asyncio.Event
) -> None:
    async with client.stream("GET", "/api/v1/watch", params={"kinds": "VirtualMachine"}, timeout=None) as resp:
        resp.raise_for_status()
        ready.set()
        async for line in resp.aiter_lines():
            if line.strip():
                obj = json.loads(line)
                queue.put_nowait((time.perf_counter(), obj))


async def api_series(
    kv: EtcdKV, client: httpx.AsyncClient, n: int, *, via_api: bool
) -> tuple[list[float], list[float]]:
    queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    ready = asyncio.Event()
    reader = asyncio.create_task(api_lines(client, queue, ready))
    await ready.wait()
    await asyncio.sleep(0.2)
    out, writes = [], []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            if via_api:
                doc = vm_doc(0)
                doc["metadata"]["labels"]["seq"] = str(i)
                r = await client.put(f"/api/v1/virtualmachines/{NAME}", json=doc)
                r.raise_for_status()
                writes.append(time.perf_counter() - t0)
                want = lambda o: o["name"] == NAME and o["object"]["metadata"]["labels"].get("seq") == str(i)  # noqa: E731
            else:
                # A spec value written straight to etcd (status events never reach /api/v1/watch:
                # see status_on_api_watch below).
                await kv.txn([], [op_put(SPEC_KEY, spec_value(i))])
                want = lambda o: o["name"] == RAW_NAME and o["object"]["metadata"]["labels"].get("seq") == str(i)  # noqa: E731
            while True:
                t1, obj = await asyncio.wait_for(queue.get(), 10)
                if want(obj):
                    break
            out.append(t1 - t0)
            await asyncio.sleep(0.002)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return out, writes


async def status_on_api_watch(kv: EtcdKV, client: httpx.AsyncClient) -> bool:
    """Does a status write show up on /api/v1/watch (default parts=spec,status)? 3 s to arrive."""
    queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
    ready = asyncio.Event()
    reader = asyncio.create_task(api_lines(client, queue, ready))
    await ready.wait()
    await asyncio.sleep(0.2)
    await kv.txn([], [op_put(KEY, status_value(-1))])
    try:
        while True:
            _, obj = await asyncio.wait_for(queue.get(), 3)
            if obj["part"] == "status":
                return True
    except TimeoutError:
        return False
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def run(endpoint: str, url: str, token: str, n: int) -> dict[str, list[float]]:
    kv = EtcdKV([endpoint])
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        r = await client.put(f"/api/v1/virtualmachines/{NAME}", json=vm_doc(0))
        r.raise_for_status()
        results: dict[str, list[float]] = {}
        await raw_series(kv, 50)  # warm-up
        results["raw"] = await raw_series(kv, n)
        results["api"], _ = await api_series(kv, client, n, via_api=False)
        results["api-e2e"], results["api-put"] = await api_series(kv, client, n, via_api=True)
        results["status_on_api_watch"] = [float(await status_on_api_watch(kv, client))]
    await kv.close()
    return results


def main() -> None:
    stop_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    print(f"# bench/watch.py --n {args.n}; {load_note()}")
    with tempfile.TemporaryDirectory(prefix="vp-bench-watch-") as tmp:
        base = Path(tmp)
        etcd = start_etcd(base)
        server = None
        try:
            server = start_server(base / "server", etcd, "--no-controllers")
            res = asyncio.run(run(etcd.endpoint, server.url, server.token, args.n))
        finally:
            if server is not None:
                server.stop()
            etcd.stop()
    raw50, raw99 = pct(res["raw"], 50) * 1e3, pct(res["raw"], 99) * 1e3
    print("\n(c) watch latency, write -> event received by the client (ms)")
    print(f"  {'series':<34} {'p50':>7} {'p99':>7} {'max':>7}   ratio p50 / p99 vs raw")
    labels = {
        "raw": "raw etcd put -> raw etcd watch",
        "api": "raw etcd put (spec) -> API watch",
        "api-e2e": "API PUT -> API /api/v1/watch",
        "api-put": "(API PUT response time alone)",
    }
    for k in ("raw", "api", "api-e2e", "api-put"):
        v = res[k]
        p50, p99 = pct(v, 50) * 1e3, pct(v, 99) * 1e3
        print(
            f"  {labels[k]:<34} {p50:7.2f} {p99:7.2f} {max(v) * 1e3:7.2f}   {ratio(p50, raw50)} / {ratio(p99, raw99)}"
        )
    p99 = pct(res["api"], 99) * 1e3
    print(f"  target API watch p99 <= 10 ms: {'PASS' if p99 <= 10 else 'MISS'} ({p99:.2f} ms)")
    print(f"  status write delivered on /api/v1/watch: {'yes' if res['status_on_api_watch'][0] else 'NO (bug)'}")
    print(f"# {load_note()}")


if __name__ == "__main__":
    main()
