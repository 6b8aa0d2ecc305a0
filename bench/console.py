"""The web console at 10,000 VMs: first paint and update latency (watch event -> DOM), in Debian's Chromium,
beside raw API requests measured in the same run.

    .venv/bin/python bench/console.py --vms 10000 --n 20

Starts, under a temporary directory, a lab slapd, an etcd and a `virtplane server --directory ...
--no-controllers`, stores N VMs (labels tier=web on one in ten) and a Host, and stops them by PID. Then,
interleaved round by round so that load on this shared machine hits every variant alike:

- first paint: a fresh navigation to ``/ui/virtualmachines/`` (the first 50) and to the same list filtered
  by ``tier=web``, measured by the browser (Navigation Timing: request start -> DOMContentLoaded, and the
  paint timing's first-contentful-paint), beside the raw API request the page is made of
  (``GET /api/v1/virtualmachines?limit=50``, with the same selector) with httpx; and, for scale, the whole
  list without paging (``--full`` times);
- update latency: the time from just before a ``PUT`` of the Host (maintenance toggled) to the moment the page's DOM
  shows it (a MutationObserver's Date.now()), beside the time to the same event arriving on a raw
  ``GET /api/v1/watch`` stream read by httpx in this process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from common import REPO, load_note, pct, start_etcd, start_server, stop_on_sigterm

sys.path.insert(0, str(REPO))

from controller.dev.lab.directory import LabDirectory
from tests.browser.console import launch, live, login, missing_browser, wait_for


def report(label: str, ms: list[float], base: float | None = None) -> float:
    p50 = pct(ms, 50)
    extra = f"  ({p50 / base:4.2f}x baseline)" if base else ""
    print(f"{label:<58} n={len(ms):<3} p50 {p50:8.1f} ms  p95 {pct(ms, 95):8.1f} ms  "
          f"mean {statistics.fmean(ms):8.1f} ms{extra}", flush=True)
    return p50


def vm(i: int) -> dict[str, object]:
    return {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": f"vm-{i:05d}", "labels": {"tier": "web" if i % 10 == 0 else "db"}},
            "spec": {"cluster": "prod", "cpu": {"cores": 1}, "memory": {"size": "512Mi"}}}


BINDING = {"apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": "admins"},
           "spec": {"role": "admin", "subjects": [{"kind": "Group", "name": "virtplane-admins"}]}}
HOST = {"apiVersion": "virtplane.io/v1", "kind": "Host", "metadata": {"name": "h1", "labels": {"step": "0"}},
        "spec": {"cluster": "prod", "uri": "test:///default"}}
PAINT = """
const nav = performance.getEntriesByType('navigation')[0];
const fcp = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');
return {dcl: nav.domContentLoadedEventEnd - nav.requestStart, fcp: fcp ? fcp.startTime - nav.requestStart : null,
        rows: document.querySelectorAll('table.objects tbody tr').length};
"""
OBSERVE = """
window.changed = null;
new MutationObserver(() => { if (window.changed === null) window.changed = Date.now(); })
  .observe(document.querySelector('[data-obj="Host/h1"]'), {subtree: true, childList: true, characterData: true});
"""


def painted(driver: Any) -> dict[str, Any]:
    """The page's timings, once the browser has recorded its first contentful paint (it may come after
    the load event that ends ``driver.get``)."""
    return wait_for("first contentful paint", lambda: (t := driver.execute_script(PAINT))["fcp"] is not None
                    and t, 10)


class RawWatch:
    """GET /api/v1/watch?kinds=Host read in a thread: when each revision's line arrived (time.time())."""

    def __init__(self, url: str, token: str) -> None:
        self.arrived: dict[str, float] = {}
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=None)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import json

        try:
            with self.client.stream("GET", "/api/v1/watch?kinds=Host&parts=spec") as stream:
                for line in stream.iter_lines():
                    if line:
                        body = json.loads(line)
                        labels = ((body.get("object") or {}).get("metadata") or {}).get("labels", {})
                        self.arrived[str(labels.get("step"))] = time.time()
        except httpx.TransportError:
            return  # the server stopped at the end of the run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--full", type=int, default=3, help="times the whole list is read, for scale")
    args = parser.parse_args()
    if missing_browser():
        sys.exit(missing_browser())
    stop_on_sigterm()
    print(f"# start: {load_note()}")
    with tempfile.TemporaryDirectory(prefix="vp-bench-console-") as tmp:
        base = Path(tmp)
        lab = LabDirectory(base / "slapd")
        info = lab.up()
        etcd = start_etcd(base)
        server = None
        driver = None
        try:
            config = base / "directory.yaml"
            config.write_text(yaml.safe_dump({"directory": info.client_config().model_dump(
                mode="json", exclude_none=True)}))
            server = start_server(base / "data", etcd, "--no-controllers", "--directory", str(config))
            admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.token}"},
                                 timeout=120)
            for start in range(0, args.vms, 2000):
                objects = [vm(i) for i in range(start, min(args.vms, start + 2000))]
                assert admin.post("/api/v1/apply", json={"objects": objects}).status_code == 200
            assert admin.post("/api/v1/apply", json={"objects": [BINDING, HOST]}).status_code == 200
            print(f"# {args.vms} VMs stored; server {server.url}, etcd {etcd.endpoint}, slapd pid {info.pid}")
            driver = launch()
            login(driver, server.url, "alice", info.user("alice").password())
            wait_for("logged in", lambda: "Clusters" in driver.find_element("tag name", "h1").text)

            full: list[float] = []
            for _ in range(args.full):  # the whole list, for scale (what a page would cost without paging)
                started = time.perf_counter()
                r = admin.get("/api/v1/virtualmachines")
                full.append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200 and len(r.json()["items"]) == args.vms
            paint: dict[str, list[float]] = {k: [] for k in ("api", "api-sel", "page", "page-fcp", "sel", "sel-fcp")}
            for round_ in range(args.n + 2):
                started = time.perf_counter()
                r = admin.get("/api/v1/virtualmachines", params={"limit": 50})
                api_ms = (time.perf_counter() - started) * 1000
                assert r.status_code == 200 and r.json()["metadata"]["total"] == args.vms
                started = time.perf_counter()
                r = admin.get("/api/v1/virtualmachines", params={"limit": 50, "labelSelector": "tier=web"})
                api_sel_ms = (time.perf_counter() - started) * 1000
                assert r.status_code == 200 and r.json()["metadata"]["total"] == args.vms // 10
                driver.get(f"{server.url}/ui/virtualmachines/")
                page = painted(driver)
                assert page["rows"] == 50, page
                driver.get(f"{server.url}/ui/virtualmachines/?labelSelector=tier%3Dweb")
                sel = painted(driver)
                assert sel["rows"] == 50, sel
                if round_ < 2:
                    continue  # warm-up
                paint["api"].append(api_ms)
                paint["api-sel"].append(api_sel_ms)
                paint["page"].append(page["dcl"])
                paint["page-fcp"].append(page["fcp"])
                paint["sel"].append(sel["dcl"])
                paint["sel-fcp"].append(sel["fcp"])
            report(f"raw API: GET /api/v1/virtualmachines, all {args.vms} (for scale)", full)
            base_ms = report("raw API: GET /api/v1/virtualmachines?limit=50", paint["api"])
            report("console: /ui/virtualmachines/ (50 rows), DOMContentLoaded", paint["page"], base_ms)
            report("console: /ui/virtualmachines/ (50 rows), first contentful paint", paint["page-fcp"], base_ms)
            sel_ms = report("raw API: ?limit=50&labelSelector=tier=web", paint["api-sel"])
            report("console: same filter, DOMContentLoaded", paint["sel"], sel_ms)
            report("console: same filter, first contentful paint", paint["sel-fcp"], sel_ms)

            driver.get(f"{server.url}/ui/hosts/")
            wait_for("live", lambda: live(driver))
            raw = RawWatch(server.url, server.token)
            time.sleep(0.5)  # the raw stream's request reaches the server (one-off, not part of any sample)
            dom: list[float] = []
            wire: list[float] = []
            for step in range(1, args.n + 3):
                driver.execute_script(OBSERVE)
                doc = {**HOST, "metadata": {"name": "h1", "labels": {"step": str(step)}},
                       "spec": {**HOST["spec"], "maintenance": step % 2 == 1}}  # a cell of the page changes
                before = time.time()
                assert admin.put("/api/v1/hosts/h1", json=doc).status_code == 200
                changed = wait_for("the DOM change", lambda: driver.execute_script("return window.changed"), 30)
                arrived = wait_for("the raw watch line", lambda s=str(step): raw.arrived.get(s), 30)
                if step > 2:
                    dom.append(changed - before * 1000)
                    wire.append((arrived - before) * 1000)
            base_ms = report("raw API watch: PUT -> line on /api/v1/watch", wire)
            report("console: PUT -> DOM updated (SSE + console.js)", dom, base_ms)
        finally:
            if driver is not None:
                driver.quit()
            if server is not None:
                server.stop()
            etcd.stop()
            lab.down()
    print(f"# end: {load_note()}")


if __name__ == "__main__":
    main()
