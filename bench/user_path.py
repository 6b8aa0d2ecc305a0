"""Issue 13, as a user sees it: `virtplane apply` of --vms VMs on --hosts test-driver hosts through a real
`virtplane server` (embedded etcd, controllers), then `virtplane wait --for condition=Ready vms -l ...`.

    python bench/user_path.py [--vms 5000] [--hosts 50]

Baseline, same run: a raw libvirt loop defining and starting as many minimal domains on --hosts
test-driver connections, one thread. The server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import libvirt
from common import (
    LAST_CPU,
    cluster_doc,
    host_doc,
    load_note,
    ratio,
    start_server,
    stop_on_sigterm,
    vm_doc,
    vp,
    write_yaml,
)

from controller.adapters.libvirt import codec as lvcodec


def raw_loop(base: Path, hosts: int, n: int, xml: str) -> float:
    conns = []
    for h in range(hosts):
        path = base / f"raw-{h}.xml"
        path.write_text(lvcodec.render_test_host(cpus=64, memory_kib=256 << 20))
        conns.append(libvirt.open(f"test://{path}"))
    t0 = time.perf_counter()
    for i in range(n):
        conns[i % hosts].defineXML(xml.replace("@@NAME@@", f"raw-{i:05d}")).create()
    took = time.perf_counter() - t0
    for c in conns:
        c.close()
    return took


def main() -> None:
    stop_on_sigterm()
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=50)
    args = ap.parse_args()
    print(f"# bench/user_path.py --vms {args.vms} --hosts {args.hosts}; {load_note()}")
    with tempfile.TemporaryDirectory(prefix="vp-bench-user-") as tmp:
        base = Path(tmp)
        docs = [cluster_doc()] + [host_doc(h, memory_gib=256) for h in range(args.hosts)]
        write_yaml(base / "infra.yaml", docs)
        write_yaml(base / "vms.yaml", [vm_doc(i) for i in range(args.vms)])
        server = start_server(base / "server", None)
        try:
            done, _ = vp(server, "apply", "-f", str(base / "infra.yaml"))
            assert done.returncode == 0, done.stderr
            done, _ = vp(server, "wait", "--for", "condition=Ready", "hosts", "--all", "--timeout", "120")
            assert done.returncode == 0, done.stderr
            t0 = time.perf_counter()
            done, t_apply = vp(server, "apply", "-f", str(base / "vms.yaml"))
            assert done.returncode == 0, done.stderr
            cpu_apply = dict(LAST_CPU)
            done, t_wait = vp(server, "wait", "--for", "condition=Ready", "vms", "-l", "bench=yes", "--timeout", "1800",
                              timeout=1900)
            total = time.perf_counter() - t0
            assert done.returncode == 0, done.stderr[-2000:]
            print(f"apply {args.vms} VMs: {t_apply:.2f} s (CLI CPU {cpu_apply['cli']:.2f} s, server CPU "
                  f"{cpu_apply['server']:.2f} s); then wait for all Ready: {t_wait:.2f} s (server CPU "
                  f"{LAST_CPU['server']:.2f} s); apply -> all Ready {total:.2f} s = {args.vms / total:.0f} VMs/s")
            got, _ = vp(server, "get", "vm", "vm-00000", "-o", "json")
            host = re.search(r'"host":\s*"([^"]+)"', got.stdout)
        finally:
            server.stop()
        # A minimal domain (the server's test hosts live inside its process, so its XML cannot be read
        # back): the raw loop gets the cheapest definition, the ratio is not flattered.
        xml = ("<domain type='test'><name>@@NAME@@</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
               "<os><type>hvm</type></os><devices/></domain>")
        raw = raw_loop(base, args.hosts, args.vms, xml)
        print(f"baseline: raw defineXML+create of {args.vms} domains on {args.hosts} test-driver connections, one "
              f"thread: {raw:.2f} s = {args.vms / raw:.0f} VMs/s")
        print(f"  through the server, apply -> all Ready / raw = {ratio(total, raw)} (VM placed on "
              f"{host.group(1) if host else '?'})")
    print(f"# {load_note()}")


if __name__ == "__main__":
    main()
