"""The web console follows a live migration on lab hosts (real libvirtd + QEMU), in Debian's Chromium.

An operator (bob, operator in cluster lab) logs in, opens a running VM, asks to migrate it to the other host
from its page, and watches the Migration's page: the progress bar advances through intermediate values and
the VM's host changes, with no reload (server-sent events). The move is checked with `virsh list` on both
hosts. The bandwidth is capped so the transfer takes seconds, long enough to see it progress. Root only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from controller.client.sdk import Client
from controller.dev.lab.cli import lab_manifests
from controller.dev.lab.directory import LabDirectory
from controller.dev.lab.guest import READY_MARKER, GuestImage
from controller.dev.lab.hosts import Lab
from controller.server.etcd import EmbeddedEtcd
from tests.browser.console import launch, live, login, missing_browser, screenshot, wait_for
from tests.e2e.conftest import etcdctl_run, start_server
from tests.e2e.helpers import virsh

pytestmark = [pytest.mark.lab,
              pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or "")]

CLUSTER = "lab"
BANDWIDTH_MIBPS = 24  # 256 MiB of guest memory: ~10 s of transfer


def running(uri: str) -> set[str]:
    return set(virsh(uri, "list", "--name").split())


@pytest.fixture(scope="module")
def setup(lab: Lab, guest_image: GuestImage, accel: str, etcd: EmbeddedEtcd,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("console-lab")
    directory = LabDirectory(base / "slapd")
    info = directory.up()
    server = None
    try:
        (base / "dir.yaml").write_text(yaml.safe_dump(
            {"directory": info.client_config().model_dump(mode="json", exclude_none=True)}))
        etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")
        server = start_server(base / "data", "--directory", str(base / "dir.yaml"), etcd=etcd)
        api = Client(server.url, json.loads((base / "data" / "config.json").read_text())["token"])
        docs: list[dict[str, Any]] = [
            {"apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": "operators-lab"},
             "spec": {"role": "operator", "subjects": [{"kind": "Group", "name": "virtplane-operators"}],
                      "clusters": [CLUSTER]}},
            # Watching is granted across clusters only (the API's rule), so live pages need a global viewer.
            {"apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": "viewers"},
             "spec": {"role": "viewer", "subjects": [{"kind": "Group", "name": "virtplane-viewers"}]}},
            {"apiVersion": "virtplane.io/v1", "kind": "Cluster", "metadata": {"name": CLUSTER},
             "spec": {"migration": {"bandwidthMiBps": BANDWIDTH_MIBPS}}},
            *lab_manifests(lab.status(), lab.shared_dir, CLUSTER, accel=accel),
            {"apiVersion": "virtplane.io/v1", "kind": "Disk", "metadata": {"name": "web-root"},
             "spec": {"storageDomain": "lab-shared", "size": "16Mi"}},
            {"apiVersion": "virtplane.io/v1", "kind": "VirtualMachine", "metadata": {"name": "web"},
             "spec": {"cluster": CLUSTER, "runStrategy": "Always", "machine": "pc",
                      "cpu": {"cores": 1, "maxCores": 1}, "memory": {"size": "256Mi", "maxSize": "256Mi"},
                      "disks": [{"disk": "web-root"}], "placement": {"allowedHosts": []},
                      "boot": {"kernel": str(guest_image.kernel), "initrd": str(guest_image.initrd),
                               "cmdline": guest_image.cmdline}}},
        ]
        api.apply(docs)
        uris = {h.name: h.uri for h in lab.status()}
        host = wait_for("vm/web Running", lambda: (s := api.get("virtualmachines", "web").get("status") or {})
                        .get("phase") == "Running" and s.get("host"), 120)
        wait_for("web running in libvirt", lambda: "web" in running(uris[host]), 60)
        logs = [lab.dir / "hosts" / h / "log" / "qemu" / "web.console.log" for h in uris]
        wait_for("the guest booted", lambda: any(READY_MARKER in p.read_text(errors="replace")
                                                 for p in logs if p.exists()), 120)
        with api:
            yield {"url": server.url, "api": api, "uris": uris, "host": host,
                   "password": info.user("bob").password()}
    finally:
        if server is not None:
            server.stop()
        directory.down()
        for uri in {h.uri for h in lab.status()}:
            for name in set(virsh(uri, "list", "--all", "--name").split()):
                virsh(uri, "destroy", name, check=False)
                virsh(uri, "undefine", name, check=False)


# Every value the migration page's progress bar and host cell take, as the DOM changes (no polling).
OBSERVE = """
window.seen = {percent: [], host: []};
const bar = document.querySelector('.bar progress'), host = document.getElementById('vm-host');
const note = () => {
  const p = bar ? bar.value : null, h = host ? host.textContent : null;
  if (window.seen.percent.at(-1) !== p) window.seen.percent.push(p);
  if (window.seen.host.at(-1) !== h) window.seen.host.push(h);
};
note();
new MutationObserver(note).observe(document.body, {subtree: true, childList: true, characterData: true,
                                                   attributes: true});
"""


def test_an_operator_migrates_a_vm_and_watches_it_move(setup: dict[str, Any]) -> None:
    source = setup["host"]
    target = next(h for h in setup["uris"] if h != source)
    driver = launch()
    try:
        login(driver, setup["url"], "bob", setup["password"])
        wait_for("logged in", lambda: driver.find_element(By.TAG_NAME, "h1").text.startswith("Clusters"), 30)
        driver.get(f"{setup['url']}/ui/virtualmachines/web")
        assert driver.find_element(By.CSS_SELECTOR, '[data-obj="VirtualMachine/web"] [data-path="status.host"]'
                                   ).text == source
        Select(driver.find_element(By.ID, "targetHost")).select_by_visible_text(target)
        driver.find_element(By.ID, "migrate").click()
        wait_for("the Migration's page", lambda: driver.find_element(By.TAG_NAME, "h1").text.startswith("Migration"),
                 30)
        wait_for("live", lambda: live(driver), 30)
        driver.execute_script(OBSERVE)
        name = driver.current_url.rsplit("/", 1)[1]
        try:
            wait_for("a bar between 0 and 100", lambda: 0 < float(driver.find_element(
                By.CSS_SELECTOR, ".bar progress").get_property("value")) < 100, 120)  # type: ignore[arg-type]
        except AssertionError as e:
            migration = setup["api"].get("migrations", name)
            vm = setup["api"].get("virtualmachines", "web")
            raise AssertionError(f"{e}\nmigration: {json.dumps(migration, indent=1)}\n"
                                 f"vm status: {json.dumps(vm.get('status'), indent=1)}") from None
        screenshot(driver, "migration")
        wait_for("Succeeded on the page", lambda: driver.find_element(
            By.CSS_SELECTOR, '[data-obj^="Migration/"] [data-path="status.phase"]').text == "Succeeded", 180)
        wait_for("the VM's new host on the page", lambda: driver.find_element(By.ID, "vm-host").text == target, 60)
        seen = driver.execute_script("return window.seen")
        inside = [p for p in seen["percent"] if 0 < p < 100]
        assert len(inside) >= 2 and inside == sorted(inside), seen  # advancing, never backwards
        assert seen["percent"][-1] == 100 and seen["host"][-1] == target, seen
        assert driver.execute_script("return window.vpConsole.updates") > len(inside)
        assert "web" in running(setup["uris"][target]) and "web" not in running(setup["uris"][source])
        assert setup["api"].get("migrations", name)["metadata"]["updatedBy"] == "bob"
        screenshot(driver, "migration-done")
    finally:
        driver.quit()
