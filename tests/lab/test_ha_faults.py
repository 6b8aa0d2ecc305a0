"""Fault injection on real lab hosts: power off a random host at random moments — idle, during a live
migration, during an HA restart, during a controller restart — and check after every trial that every HA VM
runs exactly once, and during the whole run that no VM ever had two QEMU processes at once (a sampler reads
every host's QEMU pidfiles every 0.1 s, which also sees guests of a host that does not answer).

CI runs three trials (one each: migration, restart, controller restart; the idle case is
tests/lab/test_ha.py's dead host). On demand: ``pytest tests/lab/test_ha_faults.py --ha-trials 20``
(``--ha-seed N`` repeats a run; the seed is printed).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.dev.lab.guest import GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import start_server
from tests.e2e.helpers import wait_for
from tests.lab.conftest import QEMU_CAPS, _bring_down
from tests.lab.test_ha import GRACE_S, HOSTS, NO_BALANCING, Sampler, guests_running, qemu_guests
from tests.lab.vplab import LabCluster, lab_cluster

pytestmark = pytest.mark.lab

VMS = ("ft-1", "ft-2", "ft-3")
SCENARIOS = ("idle", "migration", "restart", "controller-restart")
CI_SCENARIOS = ("migration", "restart", "controller-restart")


@dataclass
class Faults:
    cluster: LabCluster
    etcd: EmbeddedEtcd
    data_dir: Path
    server_args: tuple[str, ...]

    def restart_server(self, before_start: object = None) -> None:
        """SIGKILL the server (mid-reconcile, whatever it does), run ``before_start``, start a new one."""
        self.cluster.server.proc.kill()
        self.cluster.server.proc.wait()
        if callable(before_start):
            before_start()
        self.cluster.server = start_server(self.data_dir, *self.server_args, etcd=self.etcd)


@pytest.fixture(scope="module")
def faults(lab_prerequisites: None, guest_image: GuestImage, accel: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    lab = Lab(tmp_path_factory.mktemp("faultlab"), qemu_caps_dir=QEMU_CAPS, lock_manager=True)
    base = tmp_path_factory.mktemp("fault-server")
    etcd = EmbeddedEtcd(base / "etcd")
    try:
        lab.up(len(HOSTS))
        etcd.start()
        args = ("--lab-dir", str(lab.dir))
        gen = lab_cluster(lab, guest_image, base / "server", etcd, accel, *args,
                          cluster_spec={"ha": {"hostGracePeriodSeconds": GRACE_S, "fencing": True}, **NO_BALANCING})
        cluster = next(gen)
        state = Faults(cluster, etcd, base / "server", args)
        try:
            yield state
        finally:
            cluster.server.stop()
            gen.close()
    finally:
        etcd.stop()
        _bring_down(lab)


def placements(f: Faults) -> dict[str, list[str]]:
    """Where each test VM has a live QEMU process (every host, answering or not)."""
    where: dict[str, list[str]] = {vm: [] for vm in VMS}
    for host in HOSTS:
        for vm in qemu_guests(f.cluster.lab, host) & set(VMS):
            where[vm].append(host)
    return where


def settled(f: Faults, off: set[str]) -> bool:
    """Every HA VM has exactly one QEMU process, on a host that is on, and libvirt there says it runs."""
    where = placements(f)
    if any(len(hosts) != 1 or hosts[0] in off for hosts in where.values()):
        return False
    return all(vm in guests_running(f.cluster.lab, hosts[0]) for vm, hosts in where.items())


def power_off(f: Faults, host: str, off: dict[str, float]) -> None:
    f.cluster.lab.power_off(host)
    off.setdefault(host, time.monotonic())


def trial(f: Faults, rng: random.Random, scenario: str) -> float:
    """One fault; returns seconds from the first power-off until every HA VM runs exactly once again
    (after an HA restart, or at once when the host that died ran none of them)."""
    lab, cluster = f.cluster.lab, f.cluster
    where = placements(f)
    busy = sorted({h for hosts in where.values() for h in hosts})
    victim = rng.choice(busy)
    off: dict[str, float] = {}  # host -> when it was powered off
    if scenario == "idle":
        power_off(f, victim, off)
    elif scenario == "migration":
        vm = next(v for v, hosts in where.items() if hosts == [victim])
        target = rng.choice([h for h in HOSTS if h != victim])
        done = cluster.vp("migrate", f"vm/{vm}", "--to", target)
        assert done.returncode == 0, done.stderr
        # The incoming QEMU on the target appears when the transfer starts (read from its pidfile, at once).
        wait_for(f"{vm} migrating", lambda: vm in qemu_guests(lab, target), 30, interval=0.02)
        time.sleep(rng.uniform(0, 2))  # a migration of the test guest takes 3-5 s under TCG
        power_off(f, rng.choice((victim, target)), off)
    elif scenario == "restart":
        power_off(f, victim, off)
        wait_for(f"{victim} Fenced", lambda: cluster.status("Host", victim).get("phase") == "Fenced", 90,
                 interval=0.1)
        time.sleep(rng.uniform(0, 2))  # the HA restarts are under way
        second = rng.choice([h for h in HOSTS if h != victim])
        power_off(f, second, off)
    elif scenario == "controller-restart":
        f.restart_server(lambda: power_off(f, victim, off))
    else:
        raise AssertionError(scenario)
    wait_for(f"every HA VM running exactly once after {scenario} ({sorted(off)} off; now {placements(f)})",
             lambda: settled(f, set(off)), 240, interval=0.2)
    took = time.monotonic() - min(off.values())
    before = cluster.reconciles("VirtualMachine")
    for host in sorted(off):
        lab.power_on(host)
    wait_for(f"{sorted(off)} Ready again", lambda: all(cluster.status("Host", h).get("phase") == "Ready"
                                                      for h in off), 90)
    # A host coming back queues every VM of the cluster: let each be reconciled once with it Ready.
    cluster.wait_reconciles("VirtualMachine", len(VMS), since=before)
    wait_for(f"each HA VM running once after power-on (now {placements(f)})", lambda: settled(f, set()), 60)
    return took


def test_random_host_power_offs_never_run_a_vm_twice(faults: Faults, request: pytest.FixtureRequest) -> None:
    cluster = faults.cluster
    trials: int = request.config.getoption("--ha-trials")
    seed: int = request.config.getoption("--ha-seed") or random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    print(f"\nfault injection: {trials} trials, seed {seed}")
    docs = []
    for i, name in enumerate(VMS):
        doc = cluster.vm(name, [f"{name}-root"])
        doc["spec"]["placement"] = {}
        doc["spec"]["highAvailability"] = {"enabled": True, "priority": 10 * (i + 1)}
        docs.append(doc)
    cluster.apply(*(cluster.disk(f"{n}-root") for n in VMS), *docs)
    for name in VMS:
        cluster.wait_phase("VirtualMachine", name, "Running", timeout=180)
    wait_for("every HA VM running once", lambda: settled(faults, set()), 60)
    results: list[tuple[str, float]] = []
    with Sampler(cluster.lab, set(VMS)) as sampler:
        for n in range(trials):
            scenario = CI_SCENARIOS[n] if trials <= len(CI_SCENARIOS) else (
                SCENARIOS[n] if n < len(SCENARIOS) else rng.choice(SCENARIOS))
            took = trial(faults, rng, scenario)
            results.append((scenario, took))
            print(f"  trial {n + 1}: {scenario:<18} every HA VM running once again after {took:5.1f} s")
            assert not sampler.doubles, f"trial {n + 1} ({scenario}): a VM ran twice: {sampler.doubles[:5]}"
    assert len(results) == trials
    cluster.vp("delete", "vm", *VMS)
