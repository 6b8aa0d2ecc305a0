"""The CLI end to end through a real server and a real etcd, checked with etcdctl too."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import REPO, VIRTPLANE, ServerProcess, Vp, etcd_revision, etcdctl_run, start_server

CLUSTER = """\
apiVersion: virtplane.io/v1
kind: Cluster
metadata:
  name: prod
spec: {}
"""


def vm_yaml(name: str, memory: str = "512Mi", labels: str = "app: web", extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: virtplane.io/v1
        kind: VirtualMachine
        metadata:
          name: {name}
          labels: {{{labels}}}
        spec:
          cluster: prod
          cpu: {{cores: 1}}
          memory: {{size: {memory}}}
        {extra}""")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def spec_keys(etcd: EmbeddedEtcd) -> list[str]:
    return etcdctl_run(etcd.endpoint, "get", "--prefix", "/virtplane/specs/", "--keys-only").split()


def test_apply_examples_is_one_transaction_and_idempotent(vp: Vp, etcd: EmbeddedEtcd) -> None:
    before = etcd_revision(etcd.endpoint)
    done = vp("apply", "-f", "examples/")
    assert done.returncode == 0, done.stderr
    assert "virtualmachine/" in done.stdout and " created" in done.stdout
    keys = spec_keys(etcd)
    assert "/virtplane/specs/Cluster/prod" in keys or any(k.startswith("/virtplane/specs/Cluster/") for k in keys)
    n_objects = done.stdout.count(" created")
    assert len(keys) == n_objects
    # The server limits transactions to 128 ops against this (external) etcd: batches, each one revision.
    txns = int(re.search(r"(\d+) transaction", done.stderr).group(1))  # type: ignore[union-attr]
    assert etcd_revision(etcd.endpoint) - before == txns + 1  # + its audit record
    again = vp("apply", "-f", "examples/")
    assert again.returncode == 0
    assert " created" not in again.stdout and " configured" not in again.stdout
    assert etcd_revision(etcd.endpoint) - before == txns + 1  # nothing written (nor audited) the second time
    assert vp("diff", "-f", "examples/").returncode == 0


def test_get_kinds_names_and_outputs(vp: Vp, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", CLUSTER + "---\n" + vm_yaml("web-1") + "---\n" + vm_yaml("db-1", labels="app: db"))
    assert vp("apply", "-f", str(tmp_path)).returncode == 0
    for kind in ("vm", "vms", "virtualmachine", "VirtualMachines"):
        out = vp("get", kind)
        assert out.returncode == 0, out.stderr
        assert "web-1" in out.stdout and "db-1" in out.stdout and "NAME" in out.stdout
    selected = vp("get", "vms", "-l", "app=db", "-o", "name")
    assert selected.stdout.split() == ["virtualmachine/db-1"]
    one = json.loads(vp("get", "vm/web-1", "-o", "json").stdout)
    assert one["metadata"]["generation"] == 1 and one["spec"]["memory"]["size"] == "512Mi"
    assert vp("get", "vm", "nope").returncode == 2
    unknown = vp("get", "virtualmachin")
    assert unknown.returncode == 2 and "virtualmachine" in unknown.stderr.lower()


def test_diff_exit_codes_and_output(vp: Vp, tmp_path: Path) -> None:
    f = write(tmp_path / "vm.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    assert vp("apply", "-f", str(f)).returncode == 0
    assert vp("diff", "-f", str(f)).returncode == 0
    write(f, CLUSTER + "---\n" + vm_yaml("web-1", memory="1Gi"))
    changed = vp("diff", "-f", str(f))
    assert changed.returncode == 1
    assert "-    size: 512Mi" in changed.stdout and "+    size: 1Gi" in changed.stdout
    write(f, CLUSTER + "---\n" + vm_yaml("web-1", memory="lots"))
    assert vp("diff", "-f", str(f)).returncode == 2


BAD_INPUTS = {
    "malformed-yaml": ("kind: VirtualMachine\nmetadata: {name: x\nspec: [", r"bad\.yaml:\d+:\d+"),
    "unknown-kind": (
        "apiVersion: virtplane.io/v1\nkind: VirtualMachin\nmetadata: {name: x}\nspec: {}\n",
        r"bad\.yaml:2:\d+: kind: .*VirtualMachine",
    ),
    "unknown-field": (vm_yaml("x", extra="  colour: blue\n"), r"bad\.yaml:10:\d+: spec\.colour"),
    "wrong-type": (vm_yaml("x").replace("cores: 1", "cores: many"), r"bad\.yaml:8:\d+: spec\.cpu\.cores"),
    "invalid-value": (vm_yaml("x", memory="lots"), r"bad\.yaml:9:\d+: spec\.memory\.size"),
    "bad-name": (vm_yaml("Web_1"), r"bad\.yaml:4:\d+: metadata\.name"),
    "duplicate-name": (vm_yaml("x") + "---\n" + vm_yaml("x"), r"bad\.yaml:\d+:\d+: .*x"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_the_place_and_writes_nothing(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path, case: str) -> None:
    text, pattern = BAD_INPUTS[case]
    good = write(tmp_path / "good.yaml", CLUSTER)
    write(tmp_path / "bad.yaml", text)
    before = etcd_revision(etcd.endpoint)
    done = vp("apply", "-f", str(good), "-f", str(tmp_path / "bad.yaml"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(pattern, done.stderr), done.stderr
    assert "nothing was written" in done.stderr
    assert etcd_revision(etcd.endpoint) == before
    assert spec_keys(etcd) == []


def test_too_large_object_is_refused_whole(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    big = "x" * 1_600_000  # over the 1.5 MB request limit this server uses for an external etcd
    write(
        tmp_path / "big.yaml",
        CLUSTER
        + "---\n"
        + vm_yaml("big", extra="").replace(
            "labels: {app: web}", f"labels: {{app: web}}\n  annotations: {{blob: {big}}}"
        ),
    )
    before = etcd_revision(etcd.endpoint)
    done = vp("apply", "-f", str(tmp_path))
    assert done.returncode == 2, done.stderr
    assert "VirtualMachine" in done.stderr and "big" in done.stderr and "nothing was written" in done.stderr
    assert etcd_revision(etcd.endpoint) == before


def test_prune_deletes_what_the_source_no_longer_has(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", CLUSTER + "---\n" + vm_yaml("web-1") + "---\n" + vm_yaml("web-2"))
    assert vp("apply", "-f", str(tmp_path), "--source", "git").returncode == 0
    write(tmp_path / "a.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    preview = vp("apply", "-f", str(tmp_path), "--prune", "--source", "git", "--dry-run")
    assert preview.stdout.splitlines()[0] == "virtualmachine/web-2 deleted (dry run)"
    assert "/virtplane/specs/VirtualMachine/web-2" in spec_keys(etcd)
    assert vp("diff", "-f", str(tmp_path), "--prune", "--source", "git").returncode == 1
    done = vp("apply", "-f", str(tmp_path), "--prune", "--source", "git")
    assert done.returncode == 0 and done.stdout.splitlines()[0] == "virtualmachine/web-2 deleted"
    assert "/virtplane/specs/VirtualMachine/web-2" not in spec_keys(etcd)
    assert "/virtplane/specs/VirtualMachine/web-1" in spec_keys(etcd)
    assert vp("apply", "-f", str(tmp_path), "--prune").returncode == 2  # --prune needs --source


def test_stale_resource_version_is_a_conflict(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    f = write(tmp_path / "vm.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    assert vp("apply", "-f", str(f)).returncode == 0
    rv = json.loads(vp("get", "vm/web-1", "-o", "json").stdout)["metadata"]["resourceVersion"]
    assert vp("apply", "-f", str(write(tmp_path / "vm.yaml", vm_yaml("web-1", memory="1Gi")))).returncode == 0
    stale = vm_yaml("web-1", memory="2Gi").replace("  name: web-1", f"  name: web-1\n  resourceVersion: '{rv}'")
    before = etcd_revision(etcd.endpoint)
    done = vp("apply", "-f", "-", input=stale)
    assert done.returncode == 3, done.stderr
    assert "web-1" in done.stderr and "conflict" in done.stderr
    assert etcd_revision(etcd.endpoint) == before
    assert json.loads(vp("get", "vm/web-1", "-o", "json").stdout)["spec"]["memory"]["size"] == "1Gi"


def test_generation_moves_only_with_spec(vp: Vp, tmp_path: Path) -> None:
    f = write(tmp_path / "vm.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    vp("apply", "-f", str(f))
    write(f, CLUSTER + "---\n" + vm_yaml("web-1", labels="app: web, tier: front"))
    assert "configured" in vp("apply", "-f", str(f)).stdout
    assert json.loads(vp("get", "vm/web-1", "-o", "json").stdout)["metadata"]["generation"] == 1
    write(f, CLUSTER + "---\n" + vm_yaml("web-1", memory="1Gi"))
    vp("apply", "-f", str(f))
    assert json.loads(vp("get", "vm/web-1", "-o", "json").stdout)["metadata"]["generation"] == 2


def test_unauthenticated_requests_get_401(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/api/v1/vms").status_code == 401
    bad = httpx.get(f"{server.url}/api/v1/vms", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["reason"] == "Unauthorized"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 401  # needs the token unless --metrics-public
    assert "virtplane_api_requests_total" in server.metrics()
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert "/api/v1/virtualmachines/{name}" in doc["paths"] and "VirtualMachine" in doc["components"]["schemas"]


def test_config_file_is_private(server: ServerProcess) -> None:
    config = Path(server.env["VIRTPLANE_CONFIG"])
    assert config.stat().st_mode & 0o777 == 0o600
    body = json.loads(config.read_text())
    assert body["server"] == server.url and len(body["token"]) >= 32


def test_delete_describe_and_wait(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    write(tmp_path / "vm.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    vp("apply", "-f", str(tmp_path))
    described = vp("describe", "vm/web-1")
    assert described.returncode == 0 and "Name:" in described.stdout and "cluster: prod" in described.stdout
    timed_out = vp("wait", "--for", "condition=Ready", "vm/web-1", "--timeout", "0.5")
    assert timed_out.returncode == 1 and "timed out" in timed_out.stderr
    stale = {"observedGeneration": 0, "phase": "Running",
             "conditions": [{"type": "Ready", "status": "True", "reason": "Running"}]}
    etcdctl_run(etcd.endpoint, "put", "/virtplane/status/VirtualMachine/web-1", json.dumps(stale))
    # Ready about an older generation is not Ready for this one.
    assert vp("wait", "--for", "condition=Ready", "vm/web-1", "--timeout", "0.5").returncode == 1
    status = {**stale, "observedGeneration": 1}
    etcdctl_run(etcd.endpoint, "put", "/virtplane/status/VirtualMachine/web-1", json.dumps(status))
    assert vp("wait", "--for", "condition=Ready", "vm/web-1", "--timeout", "10").returncode == 0
    assert "Running" in vp("get", "vms").stdout
    assert vp("delete", "vm/web-1").returncode == 0
    assert "/virtplane/specs/VirtualMachine/web-1" not in spec_keys(etcd)
    assert vp("wait", "--for", "delete", "vm/web-1", "--timeout", "5").returncode == 0


def _list_requests(server: ServerProcess) -> int:
    found = re.findall(r'virtplane_api_requests_total\{code="200",route="list"\} (\d+)', server.metrics())
    return sum(int(n) for n in found)


def test_wait_for_many_follows_the_watch(vp: Vp, server: ServerProcess, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """`wait` on a selection lists once and then follows the watch (it does not list again every 0.2 s):
    it ends when the last one is Ready, and on a timeout it names those that are not."""
    docs = [vm_yaml(f"w-{i}", labels="app: w") for i in range(3)] + [vm_yaml("other", labels="app: x")]
    write(tmp_path / "w.yaml", CLUSTER + "".join("---\n" + d for d in docs))
    assert vp("apply", "-f", str(tmp_path / "w.yaml")).returncode == 0
    ready = {"observedGeneration": 1, "phase": "Running",
             "conditions": [{"type": "Ready", "status": "True", "reason": "Running"}]}
    lists = _list_requests(server)
    waiter = subprocess.Popen([VIRTPLANE, "wait", "--for", "condition=Ready", "vms", "-l", "app=w", "--timeout", "30"],
                              env=server.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        time.sleep(1.0)
        for i in range(3):
            etcdctl_run(etcd.endpoint, "put", f"/virtplane/status/VirtualMachine/w-{i}", json.dumps(ready))
            time.sleep(0.5)
            assert waiter.poll() is None or i == 2, "ended before the last one was Ready"
        stdout, stderr = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, stderr
    assert stdout.splitlines() == [f"virtualmachine/w-{i} condition Ready=True" for i in range(3)]
    assert _list_requests(server) - lists == 1, "one list, then the watch"

    # A timeout names what is still missing, and comes on time although nothing changes meanwhile.
    etcdctl_run(etcd.endpoint, "del", "/virtplane/status/VirtualMachine/w-1")
    started = time.monotonic()
    late = vp("wait", "--for", "condition=Ready", "vms", "-l", "app=w", "--timeout", "2")
    assert late.returncode == 1 and "virtualmachine/w-1" in late.stderr and "w-0" not in late.stderr
    assert time.monotonic() - started < 10


def test_get_watch_prints_changes(vp: Vp, server: ServerProcess, tmp_path: Path) -> None:
    f = write(tmp_path / "vm.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    vp("apply", "-f", str(f))
    watcher = subprocess.Popen(
        [VIRTPLANE, "get", "vms", "-w"],
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()
        assert "NAME" in first
        assert "web-1" in watcher.stdout.readline()
        write(f, CLUSTER + "---\n" + vm_yaml("web-1") + "---\n" + vm_yaml("web-2"))
        deadline = time.monotonic() + 20
        vp("apply", "-f", str(f))
        line = watcher.stdout.readline()
        assert "web-2" in line and time.monotonic() < deadline
    finally:
        watcher.terminate()
        watcher.communicate(timeout=10)


def test_get_watch_follows_only_the_selection_and_only_visible_changes(vp: Vp, server: ServerProcess,
                                                                       tmp_path: Path) -> None:
    f = tmp_path / "sel.yaml"

    def apply(*vms: str) -> None:
        write(f, CLUSTER + "".join("---\n" + v for v in vms))
        assert vp("apply", "-f", str(f)).returncode == 0

    apply(vm_yaml("sel-1", labels="app: sel"))
    watcher = subprocess.Popen([VIRTPLANE, "get", "vms", "-l", "app=sel", "-w"], env=server.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        seen = _read_until(watcher, "sel-1", 30)
        assert seen.splitlines()[0].split()[:2] == ["NAME", "CLUSTER"], seen
        apply(vm_yaml("sel-1", labels="app: sel"), vm_yaml("other-1", labels="app: other"))  # not selected
        apply(vm_yaml("sel-1", labels="app: sel", extra="  runStrategy: Manual\n"),
              vm_yaml("other-1", labels="app: other"))
        apply(vm_yaml("sel-1", memory="1Gi", labels="app: sel"), vm_yaml("other-1", labels="app: other"))
        changed = _read_until(watcher, "sel-1", 30)
        assert changed.splitlines() == [changed.splitlines()[-1]] and "1Gi" in changed, changed
        apply(vm_yaml("sel-1", memory="1Gi", labels="app: moved"), vm_yaml("other-1", labels="app: other"))
        left = _read_until(watcher, "sel-1", 30)
        assert left.strip() == "virtualmachine/sel-1 no longer matches app=sel", left
    finally:
        watcher.terminate()
        watcher.communicate(timeout=10)


def test_export_keeps_comments(vp: Vp, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    f = write(
        repo / "vm.yaml",
        "# our web server\n" + CLUSTER + "---\n" + vm_yaml("web-1").replace("  cpu:", "  # one is plenty\n  cpu:"),
    )
    vp("apply", "-f", str(repo))
    write(tmp_path / "change.yaml", vm_yaml("web-1", memory="1Gi"))
    vp("apply", "-f", str(tmp_path / "change.yaml"))
    done = vp("export", "-d", str(repo))
    assert done.returncode == 0, done.stderr
    text = f.read_text()
    assert "# our web server" in text and "# one is plenty" in text and "size: 1Gi" in text
    assert (repo / "clusters").exists() is False  # objects found in existing files stay there
    assert vp("diff", "-f", str(repo)).returncode == 0


def test_embedded_etcd_is_started_and_stopped(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        etcd_log = next((tmp_path / "data").rglob("etcd.log"))
        assert etcd_log.exists()
        done = subprocess.run(
            [VIRTPLANE, "apply", "-f", "-"],
            input=CLUSTER,
            env=server.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        children = subprocess.run(
            ["ps", "-o", "pid=,comm=", "--ppid", str(server.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        etcd_pids = [int(line.split()[0]) for line in children.splitlines() if "etcd" in line]
        assert etcd_pids, children
    finally:
        assert server.stop() == 0
    for pid in etcd_pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_server_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [VIRTPLANE, "--server", "http://127.0.0.1:9", "--token", "x", "get", "vms"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 4 and "cannot reach" in done.stderr


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read stdout lines until one contains ``needle``, with a deadline (a reader thread: select() on a
    buffered pipe would miss lines already read into Python's buffer)."""
    import queue
    import threading

    assert proc.stdout is not None
    lines: queue.Queue[str] = getattr(proc, "_lines", None) or queue.Queue()
    if not hasattr(proc, "_lines"):
        proc._lines = lines  # type: ignore[attr-defined]
        stdout = proc.stdout
        threading.Thread(target=lambda: [lines.put(line) for line in iter(stdout.readline, "")], daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not printed within {timeout} s; got:\n{seen}")


def test_apply_watch_reapplies_on_change(vp: Vp, server: ServerProcess, tmp_path: Path) -> None:
    f = write(tmp_path / "repo" / "vm.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    watcher = subprocess.Popen(
        [VIRTPLANE, "apply", "-f", str(tmp_path / "repo"), "--watch"],
        env=server.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
    )
    try:
        _read_until(watcher, "watching", 30)
        write(f, CLUSTER + "---\n" + vm_yaml("web-1", memory="1Gi"))
        _read_until(watcher, "virtualmachine/web-1 configured", 30)
        size = json.loads(vp("get", "vm/web-1", "-o", "json").stdout)["spec"]["memory"]["size"]
        assert size == "1Gi"
    finally:
        watcher.terminate()
        watcher.communicate(timeout=10)


def test_watch_stream_carries_spec_and_status_changes(vp: Vp, server: ServerProcess, etcd: EmbeddedEtcd,
                                                      tmp_path: Path) -> None:
    write(tmp_path / "vm.yaml", CLUSTER + "---\n" + vm_yaml("web-1"))
    token = json.loads(Path(server.env["VIRTPLANE_CONFIG"]).read_text())["token"]
    start = etcd_revision(etcd.endpoint) + 1
    assert vp("apply", "-f", str(tmp_path)).returncode == 0
    status = {"observedGeneration": 1, "phase": "Running"}
    etcdctl_run(etcd.endpoint, "put", "/virtplane/status/VirtualMachine/web-1", json.dumps(status))
    seen: list[tuple[str, str, str]] = []
    with httpx.stream("GET", f"{server.url}/api/v1/watch", params={"kinds": "vm", "resourceVersion": str(start)},
                      headers={"Authorization": f"Bearer {token}"}, timeout=10) as response:
        for line in response.iter_lines():
            event = json.loads(line)
            seen.append((event["type"], event["part"], event["name"]))
            if event["part"] == "status":
                assert event["object"]["phase"] == "Running"
                break
    assert seen == [("PUT", "spec", "web-1"), ("PUT", "status", "web-1")]
