"""Controllers end to end: a real `virtplane server` with controllers on a real etcd, libvirt's test
driver for multi-host, everything driven and checked through the CLI.

The test driver's state lives inside the process that opened it, so the checks of libvirt's own view
(delete, drift) run the Manager in-process on the session etcd (the CLI talks to a `--no-controllers`
server on the same etcd) and call libvirt's API on the Manager's own connection objects.

Each server test uses its own cluster and hosts (names prefixed by the test), so tests sharing the
module's server do not see each other's VMs.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from controller.dev.demo import ensure_example_image
from controller.runtime.manager import Manager
from controller.server.etcd import EmbeddedEtcd
from controller.store import Store
from tests.e2e.conftest import REPO, ServerProcess, Vp, etcdctl_run, start_server
from tests.e2e.helpers import (
    Cli,
    cluster_doc,
    condition,
    host_doc,
    is_ready,
    manifest,
    running_manager,
    vm_doc,
    wait_for,
    write,
)

READY_S = 30.0  # test-driver VMs are Ready within ~1 s; generous for a loaded CI machine


# -- a server with controllers, on its own etcd and data dir -------------------------------------

@pytest.fixture(scope="module")
def ctl_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    server = EmbeddedEtcd(tmp_path_factory.mktemp("ctl-etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ctl_server(ctl_etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("ctl-server"), etcd=ctl_etcd)
    try:
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, f"server exited {code} on SIGTERM:\n{proc.log.read_text()[-3000:]}"


@pytest.fixture
def cli(ctl_server: ServerProcess) -> Cli:
    return Cli(ctl_server)


def cluster_with_hosts(cluster: str, hosts: int) -> list[dict[str, Any]]:
    return [cluster_doc(cluster), *(host_doc(f"{cluster}-h{i}", cluster) for i in range(1, hosts + 1))]


def vm_row(cli: Cli, name: str) -> dict[str, str]:
    """One row of `virtplane get vms` as {column: cell}."""
    lines = cli.ok("get", "vms").splitlines()
    header = lines[0].split()
    for line in lines[1:]:
        cells = line.split()
        if cells and cells[0] == name:
            return dict(zip(header, cells, strict=False))
    raise AssertionError(f"{name} not in `get vms`:\n" + "\n".join(lines))


# -- create ------------------------------------------------------------------------------------------

def test_create_vms_reach_ready_host_in_status_never_in_spec(cli: Cli, ctl_etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    c = "create"
    vms = [vm_doc(f"{c}-web-{i}", c, placement={"antiAffinityGroup": "web"}) for i in range(3)]
    path = write(tmp_path / "m.yaml", manifest(*cluster_with_hosts(c, 3), *vms))
    cli.apply(path, correlation_id="create-1")
    names = [v["metadata"]["name"] for v in vms]
    cli.wait_ready(names, READY_S)

    hosts = set()
    for name in names:
        row = vm_row(cli, name)
        assert row["PHASE"] == "Running" and row["HOST"].startswith(f"{c}-h"), row
        hosts.add(row["HOST"])
        obj = cli.obj("vm", name)
        assert obj is not None
        assert obj["status"]["host"] == row["HOST"]
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
        # The chosen host is in status, never in spec: not in -o yaml's spec, not in etcd's spec key.
        yml = cli.ok("get", "vm", name, "-o", "yaml")
        spec_part = yml.split("\nspec:\n", 1)[1].split("\nstatus:\n", 1)[0]
        assert row["HOST"] not in spec_part and "host:" not in spec_part, spec_part
        raw = etcdctl_run(ctl_etcd.endpoint, "get", f"/virtplane/specs/VirtualMachine/{name}", "--print-value-only")
        assert row["HOST"] not in raw
    assert len(hosts) == 3, f"anti-affinity group web must spread over 3 hosts, got {hosts}"
    # GitOps stays quiet: controllers wrote no spec, so the same files diff clean and apply unchanged.
    assert cli("diff", "-f", str(path)).returncode == 0
    again = cli.ok("apply", "-f", str(path))
    assert "configured" not in again and "created" not in again, again


# -- change ------------------------------------------------------------------------------------------

def test_live_memory_change_diff_shows_plan_and_is_applied_without_reboot(cli: Cli, tmp_path: Path) -> None:
    c = "live"
    base = [*cluster_with_hosts(c, 2), vm_doc(f"{c}-vm", c, memory="1Gi", max_memory="4Gi")]
    cli.apply(write(tmp_path / "v1.yaml", manifest(*base)))
    cli.wait_ready([f"{c}-vm"], READY_S)
    before = cli.obj("vm", f"{c}-vm")
    assert before is not None and before["status"]["memory"] == 1 << 30

    changed = write(tmp_path / "v2.yaml", manifest(*base[:-1], vm_doc(f"{c}-vm", c, memory="2Gi", max_memory="4Gi")))
    diff = cli("diff", "-f", str(changed))
    assert diff.returncode == 1, diff.stderr  # differences found
    assert "-    size: 1Gi" in diff.stdout and "+    size: 2Gi" in diff.stdout, diff.stdout
    plan = [line for line in diff.stdout.splitlines() if "SetMemory" in line]
    assert plan and "[live]" in plan[0] and "2048 MiB" in plan[0], diff.stdout
    assert "ShutdownDomain" not in diff.stdout and "[restart]" not in diff.stdout, diff.stdout

    cli.apply(changed, correlation_id="live-mem-1")
    after = wait_for("memory 2 GiB in status", lambda: (o := cli.obj("vm", f"{c}-vm")) and
                     o["status"].get("memory") == 2 << 30 and o["status"]["observedGeneration"] == 2 and o, READY_S)
    assert is_ready(after) and condition(after, "RestartRequired") in (None, "False")
    assert after["status"]["startTime"] == before["status"]["startTime"], "a live change must not reboot"
    executed = " ".join(e["message"] for e in cli.events(correlation_id="live-mem-1"))
    assert "SetMemory" in executed and "ShutdownDomain" not in executed and "StartDomain" not in executed, executed


def test_cold_change_manual_sets_restart_required_auto_restarts(cli: Cli, tmp_path: Path) -> None:
    c = "cold"
    hosts = cluster_with_hosts(c, 2)
    cli.apply(write(tmp_path / "v1.yaml", manifest(*hosts, vm_doc(f"{c}-vm", c, memory="1Gi", max_memory="2Gi"))))
    cli.wait_ready([f"{c}-vm"], READY_S)

    # maxSize cannot change on a running guest: with updatePolicy Manual only the condition says so.
    manual = write(tmp_path / "v2.yaml", manifest(*hosts, vm_doc(f"{c}-vm", c, memory="1Gi", max_memory="3Gi")))
    diff = cli("diff", "-f", str(manual))
    assert "[next-boot]" in diff.stdout and "ShutdownDomain" not in diff.stdout, diff.stdout
    cli.apply(manual, correlation_id="cold-manual")
    vm = wait_for("RestartRequired=True", lambda: (o := cli.obj("vm", f"{c}-vm")) and
                  condition(o, "RestartRequired") == "True" and o, READY_S)
    assert vm["status"]["phase"] == "Running" and is_ready(vm)
    msg = next(x["message"] for x in vm["status"]["conditions"] if x["type"] == "RestartRequired")
    assert "updatePolicy Manual" in msg, msg
    assert "RestartRequired" in cli.ok("describe", f"vm/{c}-vm")
    executed = " ".join(e["message"] for e in cli.events(correlation_id="cold-manual"))
    assert "ShutdownDomain" not in executed and "DestroyDomain" not in executed, "Manual must never reboot: " + executed

    # updatePolicy Auto: restarted at once, the condition clears.
    auto = write(tmp_path / "v3.yaml", manifest(*hosts, vm_doc(f"{c}-vm", c, memory="1Gi", max_memory="3Gi",
                                                               updatePolicy="Auto")))
    diff = cli("diff", "-f", str(auto))
    assert re.search(r"ShutdownDomain\s+\[restart\]", diff.stdout), diff.stdout
    cli.apply(auto, correlation_id="cold-auto")
    vm = wait_for("restarted, RestartRequired cleared", lambda: (o := cli.obj("vm", f"{c}-vm")) and
                  condition(o, "RestartRequired") in (None, "False") and is_ready(o)
                  and o["status"]["observedGeneration"] == 3 and o, READY_S)
    executed = " ".join(e["message"] for e in cli.events(correlation_id="cold-auto"))
    assert "ShutdownDomain" in executed and "StartDomain" in executed, executed


def test_auto_restart_is_visible_in_status(cli: Cli, tmp_path: Path) -> None:
    c = "restartcount"
    hosts = cluster_with_hosts(c, 1)
    cli.apply(write(tmp_path / "v1.yaml", manifest(*hosts, vm_doc(f"{c}-vm", c, max_memory="1Gi",
                                                                  updatePolicy="Auto"))))
    cli.wait_ready([f"{c}-vm"], READY_S)
    before = cli.obj("vm", f"{c}-vm")
    assert before is not None
    cli.apply(write(tmp_path / "v2.yaml", manifest(*hosts, vm_doc(f"{c}-vm", c, max_memory="2Gi",
                                                                  updatePolicy="Auto"))), correlation_id="rc-1")
    wait_for("restart executed", lambda: "StartDomain" in " ".join(
        e["message"] for e in cli.events(correlation_id="rc-1")), READY_S)
    after = wait_for("Ready at generation 2", lambda: (o := cli.obj("vm", f"{c}-vm")) and is_ready(o)
                     and o["status"]["observedGeneration"] == 2 and o, READY_S)
    assert after["status"]["restartCount"] == before["status"]["restartCount"] + 1
    assert after["status"]["startTime"] != before["status"]["startTime"]


# -- delete ------------------------------------------------------------------------------------------

def test_delete_vm_is_gone_from_api_and_status(cli: Cli, ctl_etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    c = "delete"
    cli.apply(write(tmp_path / "m.yaml", manifest(*cluster_with_hosts(c, 1), vm_doc(f"{c}-vm", c))))
    cli.wait_ready([f"{c}-vm"], READY_S)
    assert etcdctl_run(ctl_etcd.endpoint, "get", f"/virtplane/status/VirtualMachine/{c}-vm", "--keys-only").strip()
    out = cli.ok("delete", f"vm/{c}-vm")
    assert f"virtualmachine/{c}-vm deleted" in out
    assert "deleted" in cli.ok("wait", f"vm/{c}-vm", "--for", "delete", "--timeout", str(READY_S), timeout=READY_S + 30)
    missing = cli("get", "vm", f"{c}-vm")
    assert missing.returncode == 2 and "not found" in missing.stderr
    for part in ("specs", "status"):
        keys = etcdctl_run(ctl_etcd.endpoint, "get", f"/virtplane/{part}/VirtualMachine/{c}-vm", "--keys-only")
        assert not keys.strip(), f"{part} key left behind: {keys}"
    teardown = " ".join(e["message"] for e in cli.events(for_ref=f"vm/{c}-vm"))
    assert "UndefineDomain" in teardown, teardown
    wait_for("host reports 0 VMs", lambda: (h := cli.obj("host", f"{c}-h1")) and h["status"].get("vms") == 0,
             READY_S, interval=0.5)


# -- events and correlation ids -------------------------------------------------------------------

def test_events_carry_the_correlation_id_of_the_change(cli: Cli, tmp_path: Path) -> None:
    c = "corr"
    cli.apply(write(tmp_path / "m.yaml", manifest(*cluster_with_hosts(c, 2), vm_doc(f"{c}-a", c), vm_doc(f"{c}-b", c))),
              correlation_id="corr-create-7")
    cli.wait_ready([f"{c}-a", f"{c}-b"], READY_S)
    events = cli.events(correlation_id="corr-create-7")
    assert events and all(e["correlationId"] == "corr-create-7" for e in events)
    by_vm = {e["involvedObject"]["name"]: e["message"] for e in events
             if e["involvedObject"]["kind"] == "VirtualMachine"}
    for name in (f"{c}-a", f"{c}-b"):
        assert "DefineDomain" in by_vm.get(name, "") and "StartDomain" in by_vm[name], by_vm
    table = cli.ok("events", "--correlation-id", "corr-create-7")
    assert "CORRELATION" in table and f"virtualmachine/{c}-a" in table and "corr-create-7" in table
    for vm in (cli.obj("vm", f"{c}-a"), cli.obj("vm", f"{c}-b")):
        assert vm is not None
        assert vm["metadata"]["correlationId"] == vm["status"]["correlationId"] == "corr-create-7"
    # A second change gets its own id; the first id's events stay as they were.
    cli.apply(write(tmp_path / "m2.yaml", manifest(vm_doc(f"{c}-a", c, memory="1Gi"))), correlation_id="corr-mem-8")
    wait_for("events of corr-mem-8", lambda: [e for e in cli.events(correlation_id="corr-mem-8")
                                              if e["involvedObject"]["name"] == f"{c}-a"], READY_S)
    assert all(e["correlationId"] == "corr-mem-8" for e in cli.events(correlation_id="corr-mem-8"))
    assert len(cli.events(correlation_id="corr-create-7")) == len(events)
    assert cli.ok("events", "--correlation-id", "no-such-change") == ""


# -- VirtualMachinePool ---------------------------------------------------------------------------

def pool_docs(c: str, replicas: int) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": f"{c}-sd"},
         "spec": {"cluster": c, "type": "posix", "posix": {"path": f"/srv/virtplane/{c}"}, "shared": True}},
        {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": f"{c}-base"},
         "spec": {"storageDomain": f"{c}-sd", "size": "1Gi"}},
        {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachinePool", "metadata": {"name": f"{c}-runners"},
         "spec": {"cluster": c, "replicas": replicas, "baseDisk": f"{c}-base", "cloneMode": "overlay",
                  "template": {"metadata": {"labels": {"app": f"{c}-ci"}},
                               "spec": {"runStrategy": "Always", "cpu": {"cores": 1}, "memory": {"size": "256Mi"}}}}},
    ]


def pool_vms(cli: Cli, c: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in cli.objs("vms", f"app={c}-ci")}


def test_pool_scales_up_and_down_and_its_vms_show_in_get_vms(cli: Cli, tmp_path: Path) -> None:
    c = "pool"
    infra = cluster_with_hosts(c, 2)
    cli.apply(write(tmp_path / "p2.yaml", manifest(*infra, *pool_docs(c, 2))))
    wanted2 = {f"{c}-runners-0", f"{c}-runners-1"}
    wait_for("2 replicas Ready", lambda: set(v := pool_vms(cli, c)) == wanted2 and all(map(is_ready, v.values())),
             READY_S)
    for name, vm in pool_vms(cli, c).items():
        assert any(r["kind"] == "VirtualMachinePool" and r["name"] == f"{c}-runners"
                   for r in vm["metadata"]["ownerReferences"]), vm["metadata"]
        assert vm_row(cli, name)["PHASE"] == "Running"

    cli.apply(write(tmp_path / "p5.yaml", manifest(*infra, *pool_docs(c, 5))))
    wanted5 = {f"{c}-runners-{i}" for i in range(5)}
    wait_for("5 replicas Ready", lambda: set(v := pool_vms(cli, c)) == wanted5 and all(map(is_ready, v.values())),
             READY_S)
    table = cli.ok("get", "vms")
    assert all(n in table for n in wanted5)

    cli.apply(write(tmp_path / "p1.yaml", manifest(*infra, *pool_docs(c, 1))))
    wait_for("scaled down to 1", lambda: set(pool_vms(cli, c)) == {f"{c}-runners-0"}, READY_S)
    assert is_ready(cli.obj("vm", f"{c}-runners-0"))
    table = cli.ok("get", "vms")
    assert not any(f"{c}-runners-{i}" in table for i in range(1, 5)), table
    status = wait_for("pool status 1/1", lambda: (p := cli.obj("virtualmachinepool", f"{c}-runners")) and
                      p["status"].get("readyReplicas") == 1 and p["status"].get("replicas") == 1 and p, READY_S)
    assert is_ready(status)


def test_pool_scale_down_deletes_the_replicas_disks(cli: Cli, tmp_path: Path) -> None:
    c = "pooldisk"
    infra = cluster_with_hosts(c, 1)
    cli.apply(write(tmp_path / "p3.yaml", manifest(*infra, *pool_docs(c, 3))))
    wait_for("3 replicas Ready", lambda: len(v := pool_vms(cli, c)) == 3 and all(map(is_ready, v.values())), READY_S)
    cli.apply(write(tmp_path / "p1.yaml", manifest(*infra, *pool_docs(c, 1))))
    wait_for("replica VMs gone", lambda: set(pool_vms(cli, c)) == {f"{c}-runners-0"}, READY_S)
    boot_disks = lambda: sorted(d["metadata"]["name"] for d in cli.objs("disks")  # noqa: E731
                                if d["metadata"]["name"].startswith(f"{c}-runners-"))
    # Volumes of the test driver delete in milliseconds; 10 s is ample (the bug keeps them for 300 s).
    wait_for("replica boot disks deleted", lambda: boot_disks() == [f"{c}-runners-0-boot"], 10, interval=0.2)


# -- diff plans every kind ---------------------------------------------------------------------------

def plan_of(diff_out: str, ref: str) -> list[str]:
    """The plan lines `diff` printed under "plan for <ref>:"."""
    lines = diff_out.splitlines()
    start = lines.index(f"  plan for {ref}:") + 1
    plan = []
    for line in lines[start:]:
        if not line.startswith("    "):
            break
        plan.append(line.strip())
    return plan


def test_diff_shows_the_plan_of_every_kind(cli: Cli, tmp_path: Path) -> None:
    c = "dk"
    infra = cluster_with_hosts(c, 1)
    net = {"apiVersion": "virtplane.io/v1", "kind": "Network", "metadata": {"name": f"{c}-nat"},
           "spec": {"cluster": c, "type": "nat", "ipv4": {"cidr": "192.168.150.0/24"}}}
    data = {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": f"{c}-data"},
            "spec": {"storageDomain": f"{c}-sd", "size": "1Gi"}}
    base = [*infra, *pool_docs(c, 1)]
    # Before its hosts answer, a new network can only say so.
    early = cli("diff", "-f", str(write(tmp_path / "d0.yaml", manifest(*base, net))))
    assert plan_of(early.stdout, f"network/{c}-nat") == [f"(waiting: no Ready host in cluster {c} yet)"]
    cli.apply(write(tmp_path / "d1.yaml", manifest(*base)))
    wait_for("1 replica Ready", lambda: len(v := pool_vms(cli, c)) == 1 and all(map(is_ready, v.values())), READY_S)
    # New objects in a running cluster: the network and the disk the controllers will create.
    first = cli("diff", "-f", str(write(tmp_path / "d1.yaml", manifest(*base, net, data))))
    assert first.returncode == 1, first.stderr
    assert any(line.startswith("EnsureNetwork") and f"vp-{c}-nat on {c}-h1" in line
               for line in plan_of(first.stdout, f"network/{c}-nat")), first.stdout
    create = plan_of(first.stdout, f"disk/{c}-data")
    assert len(create) == 1 and create[0].startswith("CreateVolume") and f"vp-{c}-sd/{c}-data.qcow2" in create[0]
    cli.apply(write(tmp_path / "d1.yaml", manifest(*base, net, data)))
    wait_for("disk Ready", lambda: (cli.obj("disk", f"{c}-data") or {}).get("status", {}).get("phase") == "Ready",
             READY_S)

    # A Disk grown, a pool scaled up: diff names the resize (offline: no guest has the floating disk open)
    # and the replicas it will create. A disk in use by a running guest grows live: tests/lab/test_shared_storage.
    bigger = {**data, "spec": {**data["spec"], "size": "2Gi"}}
    grown = cli("diff", "-f", str(write(tmp_path / "d2.yaml", manifest(*infra, *pool_docs(c, 3), net, bigger))))
    assert grown.returncode == 1, grown.stderr
    resize = plan_of(grown.stdout, f"disk/{c}-data")
    assert len(resize) == 1 and resize[0].startswith("ResizeVolume") and "[none]" in resize[0], grown.stdout
    assert "(offline)" in resize[0], resize
    assert str(2 << 30) in resize[0], resize
    scale = plan_of(grown.stdout, f"virtualmachinepool/{c}-runners")
    assert len(scale) == 1 and scale[0].startswith("ApplyObjects"), grown.stdout
    assert f"virtualmachine/{c}-runners-1" in scale[0] and f"disk/{c}-runners-2-boot" in scale[0], scale

    # Pruned: a Disk removed from Git is deleted with its image; diff --prune says so and exits 1.
    cli.ok("apply", "--source", "dk-src", "-f", str(write(tmp_path / "d4.yaml", manifest(*base, net, data))))
    pruned = cli("diff", "--prune", "--source", "dk-src", "-f",
                 str(write(tmp_path / "d5.yaml", manifest(*base, net))))
    assert pruned.returncode == 1, pruned.stderr
    assert f"-  name: {c}-data" in pruned.stdout, pruned.stdout
    delete = plan_of(pruned.stdout, f"disk/{c}-data")
    assert len(delete) == 1 and delete[0].startswith("DeleteVolume") and "[destructive]" in delete[0], pruned.stdout
    # Nothing was written by either diff.
    assert (cli.obj("disk", f"{c}-data") or {}).get("spec", {}).get("size") == "1Gi"


def test_diff_of_a_move_shows_what_follows_it(cli: Cli, tmp_path: Path) -> None:
    c = "mv"
    vm = vm_doc(f"{c}-vm", c, max_memory="1Gi", placement={"allowedHosts": [f"{c}-h1"]})
    cli.apply(write(tmp_path / "m1.yaml", manifest(*cluster_with_hosts(c, 2), vm)))
    cli.wait_ready([f"{c}-vm"], READY_S)
    moved = vm_doc(f"{c}-vm", c, max_memory="1Gi", placement={"allowedHosts": [f"{c}-h2"]}, memory="768Mi")
    out = cli("diff", "-f", str(write(tmp_path / "m2.yaml", manifest(*cluster_with_hosts(c, 2), moved))))
    assert out.returncode == 1, out.stderr
    plan = plan_of(out.stdout, f"virtualmachine/{c}-vm")
    assert plan[0].startswith("MigrateDomain") and "[migration]" in plan[0] and f"to {c}-h2" in plan[0], plan
    assert plan[1] == "then, once it runs on the target:", plan
    # On the target the new memory size is set live and the definition restamped (no restart).
    assert any(step.startswith("SetMemory") and "[live]" in step for step in plan[2:]), plan
    assert any(step.startswith("DefineDomain") and f"on {c}-h2" in step for step in plan[2:]), plan
    assert not any("[restart]" in step for step in plan), plan


# -- clones of a Disk ------------------------------------------------------------------------------

def test_the_base_of_an_overlay_clone_stays_until_the_clone_is_deleted(cli: Cli, tmp_path: Path) -> None:
    c = "ovl"

    def disk(name: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": f"{c}-{name}"},
                "spec": {"storageDomain": f"{c}-sd", **spec}}

    docs = [*cluster_with_hosts(c, 1),
            {"apiVersion": "virtplane.io/v1", "kind": "StorageDomain", "metadata": {"name": f"{c}-sd"},
             "spec": {"cluster": c, "type": "posix", "posix": {"path": f"/srv/virtplane/{c}"}, "shared": True}},
            disk("base", size="1Gi"),
            disk("overlay", source={"clone": {"disk": f"{c}-base", "mode": "overlay"}}),
            disk("copy", source={"clone": {"disk": f"{c}-base", "mode": "copy"}})]
    cli.apply(write(tmp_path / "d.yaml", manifest(*docs)))
    phase = lambda name: ((cli.obj("disk", f"{c}-{name}") or {}).get("status") or {}).get("phase")  # noqa: E731
    wait_for("3 disks Ready", lambda: all(phase(n) == "Ready" for n in ("base", "overlay", "copy")), READY_S)
    base_path = cli.obj("disk", f"{c}-base")["status"]["path"]  # type: ignore[index]
    assert cli.obj("disk", f"{c}-overlay")["status"]["backingPath"] == base_path  # type: ignore[index]

    cli.ok("delete", f"disk/{c}-base")
    held = wait_for("base Deleting", lambda: (d if phase("base") == "Deleting" and (d := cli.obj("disk", f"{c}-base"))
                                              else None), READY_S)
    message = next(x["message"] for x in held["status"]["conditions"] if x["type"] == "Ready")
    assert message == f"backing image of overlay clone {c}-overlay; delete the clone first", message
    assert "deleted" not in cli.ok("get", "disk", f"{c}-base")  # still listed, nothing removed yet

    cli.ok("delete", f"disk/{c}-overlay")
    wait_for("base and overlay gone", lambda: cli.obj("disk", f"{c}-base") is None
             and cli.obj("disk", f"{c}-overlay") is None, READY_S)
    assert phase("copy") == "Ready"  # a full copy never depended on the base


# -- examples/ -------------------------------------------------------------------------------------

def test_examples_converge(cli: Cli, tmp_path: Path) -> None:
    """The README's main job: every VM of examples/ with runStrategy Always reaches Ready."""
    examples = shutil.copytree(REPO / "examples", tmp_path / "examples")
    ensure_example_image()  # the template Disk imports a real file (a missing one is Failed, never Ready)
    cli.apply(examples)
    started = time.monotonic()

    def always_vms() -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in cli.objs("vms")
                if o["spec"]["cluster"] == "main" and o["spec"].get("runStrategy", "Always") == "Always"}

    # web-1, web-2, db-1 and the pool's three ci-runners (pool replicas appear once the pool reconciles).
    wait_for("every runStrategy Always VM of examples/ Ready", lambda: len(v := always_vms()) >= 6
             and all(map(is_ready, v.values())), 60, interval=0.5)
    assert {"web-1", "web-2", "db-1", "ci-runners-0", "ci-runners-1", "ci-runners-2"} == set(always_vms())
    print(f"\nexamples/ converged in {time.monotonic() - started:.1f} s after apply")
    rows = {n: vm_row(cli, n) for n in ("web-1", "web-2", "db-1")}
    assert all(r["PHASE"] == "Running" for r in rows.values()), rows
    # Placement rules of the examples hold: web anti-affinity, db-1 only on host-2/host-3.
    assert rows["web-1"]["HOST"] != rows["web-2"]["HOST"]
    assert rows["db-1"]["HOST"] in ("host-2", "host-3")
    legacy = cli.obj("vm", "legacy-1")
    assert legacy is not None and legacy["status"]["phase"] == "Stopped"  # runStrategy Halted
    assert all(is_ready(h) for h in cli.objs("hosts") if h["spec"]["cluster"] == "main")
    assert cli("diff", "-f", str(examples)).returncode == 0


# -- libvirt's own view: the Manager in-process, checked through libvirt's API ----------------------

async def running_manager_alive(manager: Manager) -> bool:
    return manager.rt is not None


async def poll(what: str, probe: Any, timeout: float = READY_S, interval: float = 0.05) -> Any:
    deadline = anyio.current_time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if anyio.current_time() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")
        await anyio.sleep(interval)


async def run_cli(vp: Vp, *args: str) -> str:
    done = await anyio.to_thread.run_sync(lambda: vp(*args))
    assert done.returncode == 0, f"virtplane {' '.join(args)}: {done.stderr}"
    return done.stdout


def libvirt_domain(manager: Manager, host: str, name: str) -> Any:
    """(state, id) of a domain as libvirt reports it on the Manager's own connection, or None."""
    conn = manager.hosts.hosts[host].conn  # type: ignore[index]

    def look(c: libvirt.virConnect) -> tuple[int, int] | None:
        try:
            dom = c.lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return dom.state()[0], dom.ID()

    return conn.run("test-lookup", look)


async def vm_host(server: ServerProcess, name: str) -> str:
    api = Cli(server)

    async def ready() -> Any:
        obj = await anyio.to_thread.run_sync(lambda: api.obj("vm", name))
        return is_ready(obj) and obj["status"]["host"]  # type: ignore[index]
    return str(await poll(f"vm/{name} Ready", ready))


async def apply_inproc(vp: Vp, tmp_path: Path, c: str, *vms: dict[str, Any]) -> None:
    await run_cli(vp, "apply", "-f", str(write(tmp_path / "m.yaml", manifest(*cluster_with_hosts(c, 2), *vms))),
                  "--correlation-id", f"{c}-1")


@pytest.mark.anyio
async def test_delete_undefines_the_domain_in_libvirt(vp: Vp, server: ServerProcess, store: Store,
                                                      tmp_path: Path) -> None:
    async with running_manager(store, tmp_path / "data") as manager:
        await apply_inproc(vp, tmp_path, "idel", vm_doc("idel-vm", "idel"))
        host = await vm_host(server, "idel-vm")
        state = await libvirt_domain(manager, host, "idel-vm")
        assert state is not None and state[0] == libvirt.VIR_DOMAIN_RUNNING
        await run_cli(vp, "delete", "vm/idel-vm")

        async def undefined() -> bool:
            return await libvirt_domain(manager, host, "idel-vm") is None

        await poll("idel-vm undefined in libvirt", undefined)
        gone = await anyio.to_thread.run_sync(lambda: vp("get", "vm", "idel-vm"))
        assert gone.returncode == 2 and "not found" in gone.stderr
        for other in manager.hosts.hosts:
            assert await libvirt_domain(manager, other, "idel-vm") is None


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["destroy", "undefine"])
async def test_drift_behind_our_back_is_corrected(vp: Vp, server: ServerProcess, store: Store, tmp_path: Path,
                                                  how: str) -> None:
    c = f"gone{how}"
    async with running_manager(store, tmp_path / "data") as manager:
        await apply_inproc(vp, tmp_path, c, vm_doc(f"{c}-vm", c))
        host = await vm_host(server, f"{c}-vm")
        first = await libvirt_domain(manager, host, f"{c}-vm")
        assert first is not None and first[0] == libvirt.VIR_DOMAIN_RUNNING
        conn = manager.hosts.hosts[host].conn  # type: ignore[index]

        def behind_our_back(cx: libvirt.virConnect) -> None:
            dom = cx.lookupByName(f"{c}-vm")
            dom.destroy()
            if how == "undefine":
                dom.undefine()

        await conn.run("test-drift", behind_our_back)

        async def running_again() -> Any:
            seen = await libvirt_domain(manager, host, f"{c}-vm")
            return seen is not None and seen[0] == libvirt.VIR_DOMAIN_RUNNING and seen[1] != first[1] and seen

        await poll(f"{c}-vm running again after {how}", running_again, timeout=15)
        await vm_host(server, f"{c}-vm")  # Ready again
        events = await run_cli(vp, "events", "--for", f"vm/{c}-vm")
        # Created once (DefineDomain + StartDomain), then corrected: started (and, if undefined, defined) again.
        assert events.count("StartDomain") >= 2, events
        if how == "undefine":
            assert events.count("DefineDomain") >= 2, events


@pytest.mark.anyio
async def test_drift_is_reported_as_a_drift_event(vp: Vp, server: ServerProcess, store: Store, tmp_path: Path) -> None:
    c = "behind"  # no "drift" in the names, so only the controller's words can match
    async with running_manager(store, tmp_path / "data") as manager:
        await apply_inproc(vp, tmp_path, c, vm_doc(f"{c}-vm", c))
        host = await vm_host(server, f"{c}-vm")
        await manager.hosts.hosts[host].conn.run(  # type: ignore[index]
            "test-drift", lambda cx: cx.lookupByName(f"{c}-vm").destroy())

        api = Cli(server)

        async def drift_event() -> bool:
            events = await anyio.to_thread.run_sync(lambda: api.events(for_ref=f"vm/{c}-vm"))
            return any("drift" in (e["reason"] + " " + e["message"]).lower() for e in events)

        # Correction takes < 1 s; 8 s is plenty for an event written alongside it.
        await poll("a drift event for the destroyed domain", drift_event, timeout=8, interval=0.2)
        assert await running_manager_alive(manager)


def test_a_host_planted_past_the_api_with_a_disallowed_socket_is_never_connected(
    cli: Cli, ctl_etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    """Defence in depth (issue 9): the API refuses the socket at apply; a Host stored straight into etcd
    (before the policy existed, or by root) is refused by the Host controller too, with an event."""
    import socket as sockets
    import tempfile

    outside = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="vp-planted-"))  # not an allowed socket dir
    listener_path = outside / "evil-sock"
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as listener:
        listener.bind(str(listener_path))
        listener.listen()
        listener.settimeout(0.2)
        doc = {"apiVersion": "virtplane.io/v1", "kind": "Host",
               "metadata": {"name": "planted", "uid": "u-planted", "generation": 1},
               "spec": {"cluster": "main", "uri": f"qemu+unix:///system?socket={listener_path}"}}
        etcdctl_run(ctl_etcd.endpoint, "put", "/virtplane/specs/Host/planted", json.dumps(doc))
        events = wait_for("a HostPathRefused event",
                          lambda: [e for e in cli.events(for_ref="host/planted") if e["reason"] == "HostPathRefused"],
                          READY_S)
        assert "--allowed-socket-dir" in events[0]["message"]
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected
    etcdctl_run(ctl_etcd.endpoint, "del", "/virtplane/specs/Host/planted")
    shutil.rmtree(outside)


# -- placement and cluster policies on simulated hosts of 4 CPUs and 3 GiB -------------------------------

SMALL = "test:///default?cpus=4&memory=3"

def test_host_reserved_is_kept_from_vms_and_the_vm_says_why(cli: Cli, tmp_path: Path) -> None:
    c = "rsv"
    host = host_doc(f"{c}-h1", c, SMALL)
    host["spec"]["reserved"] = {"memory": "2Gi"}
    vm = vm_doc(f"{c}-vm", c, memory="1536Mi")
    cli.apply(write(tmp_path / "m1.yaml", manifest(cluster_doc(c), host, vm)))

    def scheduled() -> dict[str, Any] | None:
        obj = cli.obj("vm", f"{c}-vm") or {}
        return next((x for x in (obj.get("status") or {}).get("conditions", []) if x["type"] == "Scheduled"), None)

    # (WaitingForHosts first, until the new host has been listed.)
    cond = wait_for("Scheduled: Unschedulable", lambda: (c if (c := scheduled()) and c["reason"] == "Unschedulable"
                                                         else None), 60)
    assert cond["status"] == "False", cond
    assert "memory 1536 MiB > 1024 MiB" in cond["message"], cond  # 3 GiB - 2 GiB reserved
    host["spec"]["reserved"] = {"memory": "1Gi"}
    cli.apply(write(tmp_path / "m2.yaml", manifest(cluster_doc(c), host, vm)))
    cli.wait_ready([f"{c}-vm"], READY_S)
    assert vm_row(cli, f"{c}-vm")["HOST"] == f"{c}-h1"


def test_diff_of_a_cluster_policy_change_shows_what_the_balancer_would_move(cli: Cli, tmp_path: Path) -> None:
    c = "bal"
    first = cluster_doc(c)
    first["spec"] = {"scheduling": {"policy": "None"}}  # the first host that fits takes every VM
    vms = [vm_doc(f"{c}-vm{i}", c, memory="512Mi") for i in range(4)]
    cli.apply(write(tmp_path / "m1.yaml", manifest(first, *(host_doc(f"{c}-h{i}", c, SMALL) for i in (1, 2)), *vms)))
    cli.wait_ready([v["metadata"]["name"] for v in vms], READY_S)
    assert {vm_row(cli, v["metadata"]["name"])["HOST"] for v in vms} == {f"{c}-h1"}

    balanced = cluster_doc(c)
    balanced["spec"] = {"scheduling": {"policy": "EvenlyDistributed",
                                       "balancing": {"thresholdPercent": 10, "maxMigrationsPerInterval": 2}}}
    path = write(tmp_path / "m2.yaml", manifest(balanced))
    out = cli("diff", "-f", str(path))
    assert out.returncode == 1, out.stdout + out.stderr
    plan = plan_of(out.stdout, f"cluster/{c}")
    moves = [step for step in plan if step.startswith("RequestMigration")]
    assert len(moves) == 2 and all("[migration]" in m and f"{c}-h1 -> {c}-h2" in m for m in moves), plan
    assert "balance:" in moves[0] and "67%" in moves[0], moves  # 2 GiB of 3 GiB against 0
    assert not cli.objs("migrations"), "diff must not create Migration objects"
    # Within the threshold the diff says so instead.
    loose = cluster_doc(c)
    loose["spec"] = {"scheduling": {"policy": "EvenlyDistributed", "balancing": {"thresholdPercent": 90}}}
    out = cli("diff", "-f", str(write(tmp_path / "m3.yaml", manifest(loose))))
    assert "within the threshold" in out.stdout, out.stdout
