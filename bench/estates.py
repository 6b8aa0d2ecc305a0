"""Costs of bringing estates in and out, each beside a baseline measured in the same run.

(a) codec: parse of the richest corpus domain (uncached) and the fidelity check, vs ElementTree's own parse
    of the same text;
(b) import: `virtplane`'s import pipeline (qemu-img info x2, convert -p with progress, check) of a vmdk,
    vs a bare `qemu-img convert` of the same file;
(c) backup / restore of N VMs through the CLI and a server (embedded etcd), vs `apply` of the same N.

    .venv/bin/python bench/estates.py [--n 2000] [--image-mib 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cluster_doc, load_note, ratio, start_server, stop_on_sigterm, vm_doc, vp, write_yaml

from controller.adapters import images
from controller.adapters.libvirt.codec import domain as codec_domain
from controller.adapters.libvirt.codec import unrepresented


def _best(fn, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_codec(rounds: int = 2000) -> None:
    xml = (REPO / "tests/controller/adapters/corpus/desktop-q35.xml").read_text()
    parse = codec_domain._parse_domain_cached.__wrapped__  # the parser itself, not its cache

    def base() -> None:
        for _ in range(rounds):
            ET.fromstring(xml)

    def ours() -> None:
        for _ in range(rounds):
            parse(xml)

    def check() -> None:
        for _ in range(rounds // 10):
            unrepresented(xml)

    b, o, c = _best(base), _best(ours), _best(check) * 10
    print(f"(a) codec, {rounds} parses of desktop-q35.xml: ElementTree {b * 1e6 / rounds:.0f} us, "
          f"parse_domain {o * 1e6 / rounds:.0f} us ({ratio(o, b)}), unrepresented {c * 1e6 / rounds:.0f} us "
          f"({ratio(c, b)})")


def bench_import(work: Path, mib: int) -> None:
    raw = work / "seed.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), f"{mib}M"], check=True)
    with open(raw, "r+b") as f:  # incompressible data in the whole image, so the conversion has work to do
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    vmdk = work / "seed.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", str(raw), str(vmdk)], check=True)

    def bare() -> None:
        out = work / "bare.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "qcow2", str(vmdk), str(out)], check=True)
        out.unlink()

    def pipeline() -> None:
        async def go() -> None:
            async def progress(_: int) -> None:
                return None

            info = await images.image_info(str(vmdk), "vmdk")
            await images.convert(str(vmdk), info.format, str(work / "ours.qcow2"), "qcow2", progress)
            await images.check(str(work / "ours.qcow2"), "qcow2")

        anyio.run(go)
        (work / "ours.qcow2").unlink()

    b, o = _best(bare, 3), _best(pipeline, 3)
    print(f"(b) import of a {mib} MiB vmdk to qcow2: qemu-img convert {b:.2f} s, virtplane pipeline {o:.2f} s "
          f"({ratio(o, b)})")


def bench_backup(work: Path, n: int) -> None:
    docs = [cluster_doc(), *(vm_doc(i) for i in range(n))]
    write_yaml(work / "vms.yaml", docs)
    first = start_server(work / "one", None, "--no-controllers")
    try:
        done, apply_s = vp(first, "apply", "-f", str(work / "vms.yaml"))
        assert done.returncode == 0, done.stderr
        done, backup_s = vp(first, "backup", "-o", str(work / "b.json"))
        assert done.returncode == 0, done.stderr
    finally:
        first.stop()
    second = start_server(work / "two", None, "--no-controllers")
    try:
        done, restore_s = vp(second, "restore", str(work / "b.json"))
        assert done.returncode == 0, done.stderr
    finally:
        second.stop()
    size = len(json.loads((work / "b.json").read_text())["objects"])
    print(f"(c) {size} objects: apply {apply_s:.2f} s, backup {backup_s:.2f} s ({ratio(backup_s, apply_s)}), "
          f"restore {restore_s:.2f} s ({ratio(restore_s, apply_s)})")


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--image-mib", type=int, default=512)
    args = parser.parse_args()
    print(load_note())
    with tempfile.TemporaryDirectory(prefix="vp-bench-estates-") as tmp:
        work = Path(tmp)
        bench_codec()
        bench_import(work, args.image_mib)
        bench_backup(work, args.n)
    print(load_note())
    sys.stdout.flush()


if __name__ == "__main__":
    main()
