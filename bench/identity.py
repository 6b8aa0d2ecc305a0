"""Login latency, and the per-request cost of authentication + authorization with 1,000 role bindings,
beside an unauthenticated request in the same run.

    .venv/bin/python bench/identity.py --n 300

Starts, under a temporary directory, a lab slapd (TLS), an etcd and a `virtplane server --directory ...
--no-controllers` (plain HTTP on loopback, so TLS is not part of what is measured), and stops them by PID.
Then, over one keep-alive HTTP connection, N times each, sequentially:

- ``login``: POST /api/v1/login as dave (three groups deep: sre -> virtplane-operators -> virtplane-viewers)
- ``GET /healthz``: no authentication at all (the baseline)
- ``GET vm, static token``: the admin token (in memory, allowed everything)
- ``GET vm, session, 0 bindings`` / ``1,000 bindings``: bob's session (one etcd read) + RBAC with bob's
  operator binding for the VM's cluster among 999 others (other groups, other clusters)
- ``apply 1 VM, session``: a 1-object apply as bob (per-object check: a dry run first, then the write)
  beside the same apply with the static token
- ``index.allowed()``: the check alone, in-process, with the same 1,000 bindings
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from common import REPO, load_note, start_etcd, start_server, stop_on_sigterm
from directory_login import pct, time_each

sys.path.insert(0, str(REPO))

from controller.api.auth import Identity
from controller.api.rbac import RbacIndex
from controller.dev.lab.directory import LabDirectory
from specs.kinds import parse_resource
from specs.rbac import RoleBinding


def report(label: str, samples: list[float], base: float | None = None) -> float:
    ms = [s * 1000 for s in samples]
    p50 = pct(ms, 0.5)
    extra = f"  = baseline + {p50 - base:6.2f} ms ({p50 / base:4.1f}x)" if base else ""
    print(f"{label:<44} n={len(ms):<4} p50 {p50:7.2f} ms  p95 {pct(ms, 0.95):7.2f} ms  "
          f"mean {statistics.fmean(ms):7.2f} ms{extra}")
    return p50


def interleaved(n: int, fns: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """Each function once per round, N rounds: load changes on this shared machine hit every variant alike."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    samples: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(n):
        for label, fn in fns.items():
            started = time.perf_counter()
            fn()
            samples[label].append(time.perf_counter() - started)
    return samples


def bindings(n: int) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = [{
        "apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": "operators-prod"},
        "spec": {"role": "operator", "subjects": [{"kind": "Group", "name": "virtplane-operators"}],
                 "clusters": ["prod"]}}]
    for i in range(n - 1):
        docs.append({"apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": f"team-{i}"},
                     "spec": {"role": "operator" if i % 2 else "viewer",
                              "subjects": [{"kind": "Group", "name": f"team-{i}"}, {"kind": "User", "name": f"u{i}"}],
                              "clusters": [f"cluster-{i % 50}"]}})
    return docs


VM = {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": "web"},
      "spec": {"cluster": "prod", "cpu": {"cores": 1}, "memory": {"size": "512Mi"}}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--bindings", type=int, default=1000)
    args = parser.parse_args()
    stop_on_sigterm()
    print(f"# start: {load_note()}")
    with tempfile.TemporaryDirectory(prefix="vp-bench-identity-") as tmp:
        base = Path(tmp)
        lab = LabDirectory(base / "slapd")
        info = lab.up()
        etcd = start_etcd(base)
        server = None
        try:
            config = base / "directory.yaml"
            config.write_text(yaml.safe_dump({"directory": info.client_config().model_dump(mode="json",
                                                                                           exclude_none=True)}))
            server = start_server(base / "data", etcd, "--no-controllers", "--directory", str(config))
            print(f"# slapd pid {info.pid}, server {server.url}, etcd {etcd.endpoint}")
            admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"})
            anon = httpx.Client(base_url=server.url)
            assert admin.post("/api/v1/apply", json={"objects": [VM]}).status_code == 200

            def login(name: str) -> str:
                r = anon.post("/api/v1/login", json={"username": name, "password": info.user(name).password()})
                assert r.status_code == 200, r.text
                return str(r.json()["token"])

            report("login (dave, nested groups)", time_each(args.n, lambda: login("dave")))
            bob = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {login('bob')}"})

            def get(client: httpx.Client, path: str, code: int = 200) -> None:
                r = client.get(path)
                assert r.status_code == code, r.text

            def apply_one(client: httpx.Client) -> None:
                r = client.post("/api/v1/apply", json={"objects": [VM]})
                assert r.status_code == 200, r.text

            before = interleaved(args.n, {
                "GET /healthz (no auth: baseline)": lambda: get(anon, "/healthz"),
                "GET vm, static token": lambda: get(admin, "/api/v1/vms/web"),
                "GET vm, session, 0 bindings (403)": lambda: get(bob, "/api/v1/vms/web", 403),
            })
            docs = bindings(args.bindings)
            assert admin.post("/api/v1/apply", json={"objects": docs}).status_code == 200
            deadline = time.monotonic() + 30  # the API's index follows a watch
            while bob.get("/api/v1/vms/web").status_code != 200:
                assert time.monotonic() < deadline, "binding not seen in 30 s"
                time.sleep(0.05)
            after = interleaved(args.n, {
                "GET /healthz (no auth: baseline)": lambda: get(anon, "/healthz"),
                "GET vm, static token": lambda: get(admin, "/api/v1/vms/web"),
                f"GET vm, session, {args.bindings:,} bindings": lambda: get(bob, "/api/v1/vms/web"),
                "apply 1 VM (unchanged), static token": lambda: apply_one(admin),
                f"apply 1 VM (unchanged), session, {args.bindings:,}": lambda: apply_one(bob),
            })
            print("# before the bindings (round-robin)")
            healthz = report("GET /healthz (no auth: baseline)", before.pop("GET /healthz (no auth: baseline)"))
            for label, samples in before.items():
                report(label, samples, healthz)
            print(f"# with {args.bindings:,} role bindings (round-robin)")
            healthz = report("GET /healthz (no auth: baseline)", after.pop("GET /healthz (no auth: baseline)"))
            for label, samples in after.items():
                report(label, samples, healthz)

            index = RbacIndex()
            for doc in docs:
                obj = parse_resource(doc)
                assert isinstance(obj, RoleBinding)
                index.put_binding(obj)
            who = Identity("bob", frozenset({"virtplane-operators", "virtplane-viewers"}))
            runs = 20_000
            started = time.perf_counter()
            for _ in range(runs):
                assert index.allowed(who, "update", "VirtualMachine", "prod")
            per = (time.perf_counter() - started) / runs
            print(f"{'index.allowed(), in-process':<44} n={runs} mean {per * 1e6:7.2f} µs "
                  f"with {args.bindings:,} bindings")
        finally:
            if server is not None:
                server.stop()
            etcd.stop()
            lab.down()
    print(f"# end: {load_note()}")


if __name__ == "__main__":
    main()
