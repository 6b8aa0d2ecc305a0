"""Issue 2 (a)+(b): `virtplane apply` / `virtplane diff` of N VM specs through CLI+API, beside raw etcd.

    python bench/apply.py [--n 10000]

Starts its own etcd and a `virtplane server --no-controllers` on it, stops both at the end.
Baselines (same etcd, same run): the same N JSON values written with etcd's gRPC API directly
(one txn per <= max_txn_ops puts, as the store batches), and with `etcdctl put` piped through
`etcdctl txn`; a raw range read of the prefix for diff.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LAST_CPU, load_note, ratio, start_etcd, start_server, stop_on_sigterm, vm_doc, vp, write_yaml

from controller.store._etcd import EtcdKV, op_put


async def raw_put(endpoint: str, values: list[tuple[bytes, bytes]], batch: int) -> float:
    kv = EtcdKV([endpoint])
    try:
        t0 = time.perf_counter()
        for i in range(0, len(values), batch):
            await kv.txn([], [op_put(k, v) for k, v in values[i : i + batch]])
        return time.perf_counter() - t0
    finally:
        await kv.close()


async def raw_range(endpoint: str, prefix: bytes) -> tuple[float, int]:
    kv = EtcdKV([endpoint])
    try:
        t0 = time.perf_counter()
        kvs, _ = await kv.range_prefix(prefix)
        for item in kvs:
            json.loads(item.value)  # a client must at least decode what it compares
        return time.perf_counter() - t0, len(kvs)
    finally:
        await kv.close()


def etcdctl_txn(endpoint: str, values: list[tuple[bytes, bytes]], batch: int) -> float:
    env = {**os.environ, "ETCDCTL_API": "3"}
    t0 = time.perf_counter()
    for i in range(0, len(values), batch):
        # etcdctl txn reads: compares, blank line, success ops, blank line, failure ops, blank line.
        body = "\n" + "".join(f"put {k.decode()} {json.dumps(v.decode())}\n" for k, v in values[i : i + batch]) + "\n\n"
        subprocess.run(
            ["/usr/bin/etcdctl", f"--endpoints={endpoint}", "--command-timeout=120s", "txn"],
            input=body,
            text=True,
            env=env,
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - t0


def main() -> None:
    stop_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument(
        "--external",
        action="store_true",
        help="server on a separately started etcd (--etcd URL: 128 ops per txn) instead of its "
        "embedded etcd (the default deployment: 16384 ops per txn)",
    )
    args = ap.parse_args()
    n = args.n
    mode = "external etcd (--etcd)" if args.external else "embedded etcd"
    print(f"# bench/apply.py --n {n} ({mode}); {load_note()}")
    with tempfile.TemporaryDirectory(prefix="vp-bench-apply-") as tmp:
        base = Path(tmp)
        etcd = start_etcd(base) if args.external else None
        server = None
        try:
            server = start_server(base / "server", etcd, "--no-controllers")
            endpoint = server.etcd_endpoint
            batch = etcd.max_txn_ops if etcd is not None else 16384
            docs = [vm_doc(i) for i in range(n)]
            path = base / "vms.yaml"
            write_yaml(path, docs)
            values = [
                (
                    f"/rawbench/specs/VirtualMachine/{d['metadata']['name']}".encode(),
                    json.dumps(d, separators=(",", ":")).encode(),
                )
                for d in docs
            ]

            raw_s = asyncio.run(raw_put(endpoint, values, batch))
            ctl_values = [(b"/rawctl" + k[len(b"/rawbench") :], v) for k, v in values]
            ctl_s = etcdctl_txn(endpoint, ctl_values, min(batch, 1000))

            _, startup_s = vp(server, "--help")
            done, apply_s = vp(server, "apply", "-f", str(path))
            apply_cpu = dict(LAST_CPU)
            if done.returncode != 0:
                raise SystemExit(f"apply failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
            summary = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""

            done2, diff_s = vp(server, "diff", "-f", str(path))
            diff_cpu = dict(LAST_CPU)
            raw_read_s, count = asyncio.run(raw_range(endpoint, b"/rawbench/"))
            ctl_t0 = time.perf_counter()
            subprocess.run(
                ["/usr/bin/etcdctl", f"--endpoints={endpoint}", "get", "--prefix", "/rawctl/", "-w", "json"],
                env={**os.environ, "ETCDCTL_API": "3"},
                check=True,
                capture_output=True,
            )
            ctl_read_s = time.perf_counter() - ctl_t0
            reapply, reapply_s = vp(server, "apply", "-f", str(path))

            print(f"\n(a) apply of {n} VirtualMachine specs")
            print(
                f"  virtplane apply -f (wall, incl. CLI start {startup_s:.2f} s): {apply_s:8.2f} s  "
                f"{n / apply_s:8.0f} obj/s   target >= 6000 obj/s (issue 13): {'PASS' if n / apply_s >= 6000 else 'MISS'}"
            )
            print(
                f"  raw etcd gRPC txn ({batch} ops/txn):            {raw_s:8.2f} s  {n / raw_s:8.0f} obj/s   "
                f"virtplane/raw = {ratio(apply_s, raw_s)} slower"
            )
            print(
                f"  raw etcdctl txn (1000 puts/txn, process each): {ctl_s:8.2f} s  {n / ctl_s:8.0f} obj/s   "
                f"virtplane/etcdctl = {ratio(apply_s, ctl_s)}"
            )
            print(
                f"  CPU: CLI process {apply_cpu['cli']:.2f} s, server {apply_cpu['server']:.2f} s "
                f"(sum {apply_cpu['cli'] + apply_cpu['server']:.2f} s)"
            )
            print(f"  CLI summary: {summary}")
            print(f"  re-apply unchanged: {reapply_s:.2f} s (exit {reapply.returncode})")
            print(f"\n(b) diff of {n} unchanged")
            print(
                f"  virtplane diff -f: {diff_s:8.2f} s  exit {done2.returncode} (expect 0)   target <= 1 s (issue 13): "
                f"{'PASS' if diff_s <= 1 and done2.returncode == 0 else 'MISS'}"
            )
            print(f"  CPU: CLI process {diff_cpu['cli']:.2f} s, server {diff_cpu['server']:.2f} s")
            print(
                f"  raw gRPC range of prefix + json decode ({count} keys): {raw_read_s:8.3f} s   "
                f"virtplane/raw = {ratio(diff_s, raw_read_s)}"
            )
            print(
                f"  raw etcdctl get --prefix -w json:                  {ctl_read_s:8.3f} s   "
                f"virtplane/etcdctl = {ratio(diff_s, ctl_read_s)}"
            )
            if done2.returncode != 0:
                print("  diff output tail:", done2.stdout[-1500:], done2.stderr[-1500:])
            print(f"\n# {load_note()}")
        finally:
            if server is not None:
                server.stop()
            if etcd is not None:
                etcd.stop()


if __name__ == "__main__":
    main()
