"""The web console in a real browser (Debian's Chromium via Selenium), against a real `virtplane server`
with controllers, a real slapd directory (the lab's), real etcd and libvirt's test driver.

People (lab directory): alice (virtplane-admins), bob (virtplane-operators: operator in cluster prod),
carol (virtplane-viewers: viewer everywhere). Screenshots of the main views go to docs/console/.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from controller.client.sdk import Client
from controller.dev.lab.directory import LabDirectory, LabDirectoryInfo
from controller.server.etcd import EmbeddedEtcd
from tests.browser.console import launch, live, login, missing_browser, screenshot, wait_for
from tests.e2e.conftest import ServerProcess, etcdctl_run, start_server
from tests.e2e.helpers import cluster_doc, host_doc, vm_doc

pytestmark = [
    pytest.mark.skipif(not Path("/usr/sbin/slapd").exists(), reason="Debian's slapd is not installed"),
    pytest.mark.skipif(missing_browser() is not None, reason=missing_browser() or ""),
]

BINDINGS = [
    {"apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": "operators-prod"},
     "spec": {"role": "operator", "subjects": [{"kind": "Group", "name": "virtplane-operators"}],
              "clusters": ["prod"]}},
    {"apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": "viewers"},
     "spec": {"role": "viewer", "subjects": [{"kind": "Group", "name": "virtplane-viewers"}]}},
    {"apiVersion": "virtplane.io/v1", "kind": "RoleBinding", "metadata": {"name": "admins"},
     "spec": {"role": "admin", "subjects": [{"kind": "Group", "name": "virtplane-admins"}]}},
]
VMS = 60  # more than one page (50 a page)


@dataclass
class World:
    server: ServerProcess
    api: Client  # the server's static admin token
    directory: LabDirectoryInfo
    api_token: str

    @property
    def url(self) -> str:
        return self.server.url

    def password(self, name: str) -> str:
        return self.directory.user(name).password()


@pytest.fixture(scope="module")
def world(etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("console")
    lab = LabDirectory(base / "slapd")
    info = lab.up()
    server = None
    try:
        config = info.client_config().model_dump(mode="json", exclude_none=True)
        (base / "dir.yaml").write_text(yaml.safe_dump({"directory": config}))
        etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")
        server = start_server(base / "data", "--directory", str(base / "dir.yaml"), etcd=etcd)
        token = json.loads((base / "data" / "config.json").read_text())["token"]
        api = Client(server.url, token)
        docs: list[dict[str, Any]] = [*BINDINGS, cluster_doc("prod"), cluster_doc("lab")]
        docs += [host_doc("h1", "prod"), host_doc("h2", "prod")]
        docs += [vm_doc(f"vm-{i:03d}", "prod", labels={"tier": "web" if i % 3 == 0 else "db"}) for i in range(VMS)]
        api.apply(docs)
        wait_for("hosts Ready", lambda: all((api.get("hosts", h).get("status") or {}).get("phase") == "Ready"
                                            for h in ("h1", "h2")), 60)
        with api:
            yield World(server, api, info, token)
    finally:
        if server is not None:
            server.stop()
        lab.down()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    driver = launch()
    try:
        yield driver
    finally:
        driver.quit()


def heading(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "h1").text)


def test_login_pages_live_update_event_to_object_and_logout(world: World, browser: WebDriver) -> None:
    login(browser, world.url, "alice", world.password("alice"))
    wait_for("the clusters page", lambda: heading(browser).startswith("Clusters"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.objects tbody tr")
    assert sorted(str(r.get_attribute("data-obj")) for r in rows) == ["Cluster/lab", "Cluster/prod"]
    cookie = browser.get_cookie("vp_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # no script can read the session
    screenshot(browser, "clusters")

    # Hosts: capacity vs allocation bars, rendered on the server.
    browser.get(f"{world.url}/ui/hosts/")
    bars = browser.find_elements(By.CSS_SELECTOR, 'tr[data-obj="Host/h1"] .bar progress')
    assert bars and re.search(r"\d+ / \d+ \(\d+%\)", browser.find_element(
        By.CSS_SELECTOR, 'tr[data-obj="Host/h1"] .bar .bar-label').text)
    screenshot(browser, "hosts")

    # Live: a change made elsewhere (the API, like the CLI) shows up without a reload.
    wait_for("the live stream", lambda: live(browser))
    phase = browser.find_element(By.CSS_SELECTOR, 'tr[data-obj="Host/h2"] [data-path="status.phase"]')
    maintenance = browser.find_element(By.CSS_SELECTOR, 'tr[data-obj="Host/h2"] [data-path="spec.maintenance"]')
    assert phase.text == "Ready" and maintenance.text == "no"
    marker = browser.execute_script("document.body.dataset.marker = 'same page'; return 1")
    host = world.api.get("hosts", "h2")
    world.api.put({"apiVersion": "virtplane.io/v1", "kind": "Host", "metadata": {"name": "h2"},
                   "spec": {**host["spec"], "maintenance": True}})
    wait_for("h2 in maintenance on the page", lambda: maintenance.text == "yes" and phase.text == "Maintenance")
    assert marker == 1 and browser.execute_script("return document.body.dataset.marker") == "same page"

    # VMs: paged on the server, filtered by label selector.
    browser.get(f"{world.url}/ui/virtualmachines/")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.objects tbody tr")) == 50
    assert "50 of 60: vm-000 to vm-049" in browser.find_element(By.CSS_SELECTOR, "nav.pager").text
    browser.find_element(By.CSS_SELECTOR, 'nav.pager a[rel="next"]').click()
    wait_for("page 2", lambda: "10 of 60: vm-050 to vm-059" in browser.find_element(By.CSS_SELECTOR, "nav.pager").text)
    browser.get(f"{world.url}/ui/virtualmachines/")
    box = browser.find_element(By.ID, "labelSelector")
    box.send_keys("tier=web", Keys.ENTER)  # the keyboard alone
    wait_for("filtered list", lambda: "labelSelector=tier%3Dweb" in browser.current_url)
    names = [r.get_attribute("data-obj") for r in browser.find_elements(By.CSS_SELECTOR, "table.objects tbody tr")]
    assert names == [f"VirtualMachine/vm-{i:03d}" for i in range(0, VMS, 3)]
    screenshot(browser, "virtualmachines")

    # Events: follow one to its object; filter by its correlation id.
    browser.get(f"{world.url}/ui/events?for=Host/h2")
    link = browser.find_elements(By.CSS_SELECTOR, "a.event-object")[0]
    assert link.text == "Host/h2"
    screenshot(browser, "events")
    link.click()
    wait_for("Host h2's page", lambda: heading(browser) == "Host h2")
    assert "maintenance: true" in browser.find_element(By.CSS_SELECTOR, "pre.yaml").text
    screenshot(browser, "host-detail")

    # Log out: back to the login page, and the session is revoked in etcd.
    secret = browser.get_cookie("vp_session")["value"]  # type: ignore[index]
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for("the login page", lambda: heading(browser) == "Log in")
    assert browser.get_cookie("vp_session") is None
    with httpx.Client(base_url=world.url) as http:
        assert http.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    browser.get(f"{world.url}/ui/hosts/")
    assert heading(browser) == "Log in" and "next=/ui/hosts/" in browser.current_url


def test_a_viewer_is_refused_a_migration_and_nothing_is_written(world: World, browser: WebDriver) -> None:
    login(browser, world.url, "carol", world.password("carol"))
    wait_for("logged in", lambda: heading(browser).startswith("Clusters"))
    browser.get(f"{world.url}/ui/virtualmachines/vm-001")
    wait_for("vm-001's conditions", lambda: "Ready" in [th.text for th in browser.find_elements(
        By.CSS_SELECTOR, "table.conditions tbody th")] or browser.refresh())
    host = browser.find_element(By.CSS_SELECTOR, '[data-obj="VirtualMachine/vm-001"] [data-path="status.host"]')
    assert host.text in ("h1", "h2")
    assert "kind: VirtualMachine" in browser.find_element(By.CSS_SELECTOR, "pre.yaml").text
    screenshot(browser, "vm-detail")
    browser.find_element(By.ID, "migrate").click()
    wait_for("the refusal", lambda: heading(browser).startswith("403"))
    problem = browser.find_element(By.ID, "problem").text
    assert re.fullmatch(r"carol may not create Migration/vm-001-[0-9a-f]{6} in cluster prod; nothing was written",
                        problem), problem
    assert world.api.list("migrations") == []


def test_wrong_password_is_refused_on_the_page(world: World, browser: WebDriver) -> None:
    login(browser, world.url, "bob", "not-the-password")
    wait_for("the refusal", lambda: browser.find_elements(By.ID, "login-problem"))
    assert "login refused" in browser.find_element(By.ID, "login-problem").text
    assert browser.get_cookie("vp_session") is None


def test_plan_of_a_pasted_change_shows_the_diff_and_impact(world: World, browser: WebDriver) -> None:
    login(browser, world.url, "alice", world.password("alice"))
    wait_for("logged in", lambda: heading(browser).startswith("Clusters"))
    browser.get(f"{world.url}/ui/diff")
    pasted = yaml.safe_dump(vm_doc("vm-002", "prod", memory="1Gi", labels={"tier": "db"}))
    browser.find_element(By.ID, "manifest").send_keys(pasted)
    browser.find_element(By.ID, "plan").click()
    wait_for("the plan", lambda: browser.find_elements(By.CSS_SELECTOR, "article.change"))
    article = browser.find_element(By.CSS_SELECTOR, "article.change")
    assert "VirtualMachine/vm-002: configured" in article.text
    assert "+    size: 1Gi" in article.text
    assert article.find_elements(By.CSS_SELECTOR, ".impact")  # each action with its impact badge
    browser.execute_script("arguments[0].scrollIntoView()", article)
    screenshot(browser, "diff")
    assert world.api.get("virtualmachines", "vm-002")["spec"]["memory"]["size"] == "512Mi"  # nothing written


@contextlib.contextmanager
def console_session(world: World, user: str) -> Iterator[httpx.Client]:
    """A console session without a browser (what a page without JavaScript does)."""
    with httpx.Client(base_url=world.url, follow_redirects=False) as http:
        done = http.post("/ui/login", data={"username": user, "password": world.password(user), "next": "/ui/"})
        assert done.status_code == 303, done.text
        yield http


def test_read_pages_work_without_javascript_and_writes_need_the_csrf_token(world: World) -> None:
    with console_session(world, "bob") as http:
        web = [f"vm-{i:03d}" for i in range(0, VMS, 3)]
        page = http.get("/ui/virtualmachines/?labelSelector=tier%3Dweb&limit=5")
        assert re.findall(r'data-obj="VirtualMachine/(vm-\d+)"', page.text) == web[:5]
        following = re.search(r'rel="next" href="([^"]+)"', page.text)
        assert following is not None
        page = http.get(following.group(1).replace("&amp;", "&"))
        assert page.status_code == 200
        assert re.findall(r'data-obj="VirtualMachine/(vm-\d+)"', page.text) == web[5:10]
        assert "5 shown: vm-015 to vm-027" in page.text  # a filtered list is not counted (it would read all)
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        forged = http.post("/ui/virtualmachines/vm-003/migrate", data={"targetHost": "h1"})
        assert forged.status_code == 403 and "CSRF" in forged.text
        assert world.api.list("migrations") == []
        made = http.post("/ui/virtualmachines/vm-003/migrate", data={"targetHost": "h1", "csrf": csrf.group(1)})
        assert made.status_code == 303 and made.headers["location"].startswith("/ui/migrations/vm-003-")
        name = made.headers["location"].rsplit("/", 1)[1]
        stored = world.api.get("migrations", name)
        assert stored["spec"] == {"vm": "vm-003", "targetHost": "h1", "ttlSeconds": 3600}
        assert stored["metadata"]["updatedBy"] == "bob"
        world.api.delete("migrations", name)


def test_the_stream_resumes_after_the_last_event_seen(world: World) -> None:
    with console_session(world, "alice") as http:
        seen: list[dict[str, Any]] = []
        start = int(http.get("/ui/hosts/").text.split('data-revision="')[1].split('"')[0])
        for value in ("a", "b", "c"):
            host = world.api.get("hosts", "h1")
            labels = {**(host["metadata"].get("labels") or {}), "step": value}
            world.api.put({"apiVersion": "virtplane.io/v1", "kind": "Host",
                           "metadata": {"name": "h1", "labels": labels}, "spec": host["spec"]})

        def read(headers: dict[str, str], count: int) -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = []
            with http.stream("GET", f"/ui/stream?kinds=Host&resourceVersion={start + 1}", headers=headers,
                             timeout=30) as stream:
                event_id = None
                for line in stream.iter_lines():
                    if line.startswith("id: "):
                        event_id = int(line[4:])
                    elif line.startswith("data: "):
                        body = json.loads(line[6:])
                        assert body["revision"] == event_id
                        if body["part"] == "spec" and body["name"] == "h1":
                            got.append(body)
                            if len(got) == count:
                                return got
            return got

        seen = read({}, 3)
        assert [e["object"]["metadata"]["labels"]["step"] for e in seen] == ["a", "b", "c"]
        resumed = read({"Last-Event-ID": str(seen[0]["revision"])}, 2)  # as EventSource does on reconnect
        assert [e["object"]["metadata"]["labels"]["step"] for e in resumed] == ["b", "c"]


def test_a_logged_out_stream_and_page_ask_for_a_login(world: World) -> None:
    with httpx.Client(base_url=world.url) as http:
        assert http.get("/ui/stream?kinds=Host").status_code == 401
        page = http.get("/ui/virtualmachines/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/virtualmachines/"
        http.cookies.set("vp_session", "vps_not-a-session", path="/ui")
        stale = http.get("/ui/hosts/", follow_redirects=False)
        assert stale.status_code == 303 and 'vp_session=""' in stale.headers["set-cookie"]


def test_snapshot_revert_is_the_clis_request_and_needs_a_role_that_may_update(world: World) -> None:
    world.api.put({"apiVersion": "virtplane.io/v1", "kind": "Snapshot", "metadata": {"name": "snap-6"},
                   "spec": {"vm": "vm-006"}})
    # libvirt's test driver takes no disk snapshots: what is checked is the request, the annotation
    # `virtplane snapshot revert` writes (its effect on lab hosts: tests/lab/test_snapshots.py).
    with console_session(world, "carol") as http:
        page = http.get("/ui/snapshots/snap-6")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None and 'action="/ui/snapshots/snap-6/revert"' in page.text
        refused = http.post("/ui/snapshots/snap-6/revert", data={"csrf": csrf.group(1)})
        assert refused.status_code == 403 and "carol may not update Snapshot/snap-6" in refused.text
        assert "virtplane.io/revert-requested" not in (world.api.get("snapshots", "snap-6")["metadata"]
                                                       .get("annotations") or {})
    with console_session(world, "bob") as http:
        page = http.get("/ui/snapshots/snap-6")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        done = http.post("/ui/snapshots/snap-6/revert", data={"csrf": csrf.group(1)})
        assert done.status_code == 303 and done.headers["location"].startswith("/ui/snapshots/snap-6?reverted=")
    stored = world.api.get("snapshots", "snap-6")
    requested = stored["metadata"]["annotations"]["virtplane.io/revert-requested"]
    assert stored["metadata"]["updatedBy"] == "bob" and stored["spec"]["vm"] == "vm-006"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", requested)


def test_the_api_pages_by_name(world: World) -> None:
    """Pages of 25 by name: forward with metadata.continue, back with metadata.previous, both tokens passed
    as ?continue=, every page of one list at one revision."""
    with httpx.Client(base_url=world.url, headers={"Authorization": f"Bearer {world.api_token}"}) as http:
        def page(**params: object) -> dict[str, Any]:
            body: dict[str, Any] = http.get("/api/v1/virtualmachines", params={"limit": 25, **params}).json()
            return body

        def names(body: dict[str, Any]) -> list[str]:
            return [o["metadata"]["name"] for o in body["items"]]

        first = page()
        assert names(first) == [f"vm-{i:03d}" for i in range(25)]
        assert first["metadata"]["total"] == VMS and "previous" not in first["metadata"]
        assert all("status" in o for o in first["items"])
        second = page(**{"continue": first["metadata"]["continue"]})
        assert names(second) == [f"vm-{i:03d}" for i in range(25, 50)]
        assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
        last = page(**{"continue": second["metadata"]["continue"]})
        assert names(last) == [f"vm-{i:03d}" for i in range(50, VMS)] and "continue" not in last["metadata"]
        back = page(**{"continue": last["metadata"]["previous"]})
        assert names(back) == names(second) and names(page(**{"continue": back["metadata"]["previous"]})) == \
            names(first)
        bad = http.get("/api/v1/virtualmachines", params={"limit": 0})
        assert bad.status_code == 400
        assert bad.json()["error"]["message"] == "?limit= expects a whole number from 1 to 10000, got '0'"
        forged = http.get("/api/v1/virtualmachines", params={"limit": 5, "continue": "vm-024"})
        assert forged.status_code == 400 and "not a token this server gave" in forged.json()["error"]["message"]
