"""Balancing and power saving on real lab hosts with real QEMU: the balancer spreads VMs by live migration
and then stops; power saving evacuates a lightly loaded host, powers it off through the lab agent once it
has been empty long enough, and powers it on again when a VM needs room.

Two lab hosts of 2 CPUs with ``cpuOvercommit: 2`` (4 vCPUs each), so that a few one-vCPU guests make a real
imbalance (load = vCPUs / limit; CPU counts do not drift the way a host's reported memory does).
"runs" is checked with `virsh list` on each host.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from controller.dev.lab.guest import GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.helpers import virsh, wait_for
from tests.lab.conftest import QEMU_CAPS, _bring_down
from tests.lab.vplab import CLUSTER, LabCluster, lab_cluster

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]  # two tests of several minutes each, with a minute of idling

HOSTS = ("lab-1", "lab-2")
OVERCOMMIT = 2.0
VMS = ("bal-1", "bal-2", "bal-3")


@pytest.fixture(scope="module")
def policy_lab(lab_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    the_lab = Lab(tmp_path_factory.mktemp("policylab"), qemu_caps_dir=QEMU_CAPS)
    try:
        the_lab.up(len(HOSTS))
        yield the_lab
    finally:
        _bring_down(the_lab)


@pytest.fixture(scope="module")
def cluster(policy_lab: Lab, guest_image: GuestImage, accel: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    base = tmp_path_factory.mktemp("policy-server")
    etcd = EmbeddedEtcd(base / "etcd")
    etcd.start()
    try:
        yield from lab_cluster(policy_lab, guest_image, base / "server", etcd, accel, "--lab-dir", str(policy_lab.dir),
                               cluster_spec={"scheduling": {"policy": "None", "cpuOvercommit": OVERCOMMIT}})
    finally:
        etcd.stop()


def running(cluster: LabCluster, host: str) -> set[str]:
    return set(virsh(cluster.uri(host), "list", "--name").split())


def cluster_doc(scheduling: dict[str, Any], power_saving: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"scheduling": {"cpuOvercommit": OVERCOMMIT, **scheduling}}
    if power_saving is not None:
        spec["powerSaving"] = power_saving
    return {"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": CLUSTER}, "spec": spec}


def free_vm(cluster: LabCluster, name: str, cores: int = 1) -> dict[str, Any]:
    doc = cluster.vm(name, [f"{name}-root"], memory="128Mi", max_memory="128Mi")
    doc["spec"]["placement"] = {}
    doc["spec"]["cpu"] = {"cores": cores}
    return doc


def migrations(cluster: LabCluster) -> list[dict[str, Any]]:
    done = cluster.vp("get", "migrations", "-l", f"virtplane.io/balancer={CLUSTER}", "-o", "json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout).get("items", []))


def events(cluster: LabCluster, ref: str) -> list[dict[str, Any]]:
    done = cluster.vp("events", "--for", ref, "-o", "json")
    return json.loads(done.stdout)["items"] if done.returncode == 0 and done.stdout.strip() else []


def test_balancer_spreads_vms_by_live_migration_then_stops(cluster: LabCluster) -> None:
    docs = [free_vm(cluster, n) for n in VMS]
    cluster.apply(*(cluster.disk(f"{n}-root") for n in VMS), *docs)
    for name in VMS:  # policy None: the first host that fits, lab-1, takes all three (3 of its 4 vCPUs: 75%)
        assert cluster.wait_phase("VirtualMachine", name, "Running", timeout=180)["host"] == "lab-1"
    assert running(cluster, "lab-1") >= set(VMS)

    balanced = cluster_doc({"policy": "EvenlyDistributed",
                            "balancing": {"thresholdPercent": 30, "intervalSeconds": 10,
                                          "maxMigrationsPerInterval": 2}})
    import yaml

    diff = cluster.vp("diff", "-f", "-", input=yaml.safe_dump(balanced))
    assert "RequestMigration" in diff.stdout and "lab-1 -> lab-2" in diff.stdout, diff.stdout + diff.stderr
    assert "[migration]" in diff.stdout
    assert not migrations(cluster), "diff must not start anything"

    cluster.apply(balanced)
    def split() -> set[str] | None:
        on2 = running(cluster, "lab-2") & set(VMS)
        return on2 if len(on2) == 1 and running(cluster, "lab-1") & set(VMS) == set(VMS) - on2 else None

    moved = wait_for("one VM moved to lab-2 (and gone from lab-1)", split, 180)
    (vm,) = moved
    assert cluster.wait_phase("VirtualMachine", vm, "Running")["host"] == "lab-2"
    done = wait_for("the balancer's migration Succeeded",
                    lambda: (m if (m := migrations(cluster)) and all(x.get("status", {}).get("phase") == "Succeeded"
                                                                     for x in m) else None), 120)
    assert len(done) == 1 and done[0]["spec"]["vm"] == vm and done[0]["spec"]["targetHost"] == "lab-2"
    assert any(e["reason"] == "BalancerMigration" for e in events(cluster, f"cluster/{CLUSTER}"))

    # A fixed point: 50% and 25%, a spread of 25 points <= 30; more balancer intervals plan nothing.
    wait_for("Balanced", lambda: next((c for c in cluster.status("Cluster", CLUSTER).get("conditions", [])
                                       if c["type"] == "Balanced" and c["status"] == "True"), None), 60)
    assert cluster.status("Cluster", CLUSTER)["loadSpreadPercent"] == 25
    before = cluster.reconciles("Cluster")
    cluster.wait_reconciles("Cluster", 4, since=before, timeout=90)
    assert len(migrations(cluster)) == 1
    assert running(cluster, "lab-2") & set(VMS) == moved


def test_power_saving_evacuates_powers_off_and_powers_on_for_room(cluster: LabCluster) -> None:
    lab = cluster.lab
    placed = {n: cluster.status("VirtualMachine", n).get("host") for n in VMS}
    assert sorted(placed.values()) == ["lab-1", "lab-1", "lab-2"], placed  # as the balancer left them
    saving = cluster_doc({"policy": "PowerSaving", "balancing": {"intervalSeconds": 10}},
                         {"spareHosts": 0, "lowUtilizationPercent": 30, "highUtilizationPercent": 80,
                          "idleMinutesBeforePowerOff": 1})
    cluster.apply(saving)
    # lab-2 (25%) is below 30%: its VM moves to lab-1 (75% after, not above 80%); then lab-2 is empty.
    wait_for("lab-2 evacuated", lambda: not (running(cluster, "lab-2") & set(VMS)), 180)
    assert running(cluster, "lab-1") >= set(VMS)
    assert any(e["reason"] == "Evacuating" for e in events(cluster, f"cluster/{CLUSTER}"))
    # ... and after a minute empty, powered off through the lab agent.
    wait_for("lab-2 PoweredOff", lambda: cluster.status("Host", "lab-2").get("phase") == "PoweredOff", 150)
    assert not lab.host("lab-2").running  # its libvirtd is gone (the lab power switch is off)
    power = cluster.status("Host", "lab-2")["power"]
    assert power["operation"] == "power-off" and power["ok"] and power["state"] == "off"

    # A VM that does not fit on lab-1 (3 + 2 vCPUs > 4) makes power saving power lab-2 on; it runs there.
    cluster.apply(cluster.disk("big-root"), free_vm(cluster, "big", cores=2))
    wait_for("power-on requested", lambda: any(e["reason"] == "PowerOnRequested"
                                               for e in events(cluster, f"cluster/{CLUSTER}")), 60)
    status = cluster.wait_phase("VirtualMachine", "big", "Running", timeout=240)
    assert status["host"] == "lab-2"
    assert "big" in running(cluster, "lab-2")
    assert lab.host("lab-2").running
    assert any(e["reason"] == "HostPoweringOn" for e in events(cluster, "host/lab-2"))
