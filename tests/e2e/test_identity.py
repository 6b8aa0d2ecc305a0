"""People, not one token: directory login, sessions, RBAC, TLS and the audit log, end to end.

A real slapd with TLS (the lab directory's code starts and stops it by pid), a real `virtplane server` with
`--directory` and `--tls-self-signed` on the session etcd, and the real CLI. Users of the lab directory:
alice (virtplane-admins), bob (virtplane-operators), carol (virtplane-viewers), dave (sre, nested in
virtplane-operators), mallory (locked), and nobody called "nosuchuser".
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from controller.client.sdk import Client
from controller.dev.lab.directory import LabDirectory, LabDirectoryInfo, make_ca
from controller.server.etcd import EmbeddedEtcd, free_port
from tests.e2e.conftest import REPO, VIRTPLANE, ServerProcess, etcdctl_run, start_server

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/slapd").exists(), reason="Debian's slapd is not installed")

ROLEBINDINGS = """\
apiVersion: virtplane.io/v1
kind: RoleBinding
metadata: {name: operators-prod}
spec:
  role: operator
  subjects: [{kind: Group, name: virtplane-operators}]
  clusters: [prod]
---
apiVersion: virtplane.io/v1
kind: RoleBinding
metadata: {name: viewers}
spec:
  role: viewer
  subjects: [{kind: Group, name: virtplane-viewers}]
---
apiVersion: virtplane.io/v1
kind: RoleBinding
metadata: {name: admins}
spec:
  role: admin
  subjects: [{kind: Group, name: virtplane-admins}]
"""


def vm(name: str, cluster: str) -> str:
    return (f"apiVersion: virtplane.io/v1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\n"
            f"spec: {{cluster: {cluster}, cpu: {{cores: 1}}, memory: {{size: 512Mi}}}}\n")


def start(data_dir: Path, etcd: EmbeddedEtcd, *extra: str) -> ServerProcess:
    """`virtplane server` with HTTPS (self-signed) on the session etcd."""
    return start_server(data_dir, "--no-controllers", "--tls-self-signed", *extra, etcd=etcd)


def admin_config(server: ServerProcess) -> Path:
    return Path(server.env["VIRTPLANE_CONFIG"])


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDirectoryInfo]:
    lab = LabDirectory(tmp_path_factory.mktemp("slapd"))
    info = lab.up()
    try:
        yield info
    finally:
        lab.down()


def directory_file(path: Path, info: LabDirectoryInfo, **overrides: object) -> Path:
    config = info.client_config(**overrides).model_dump(mode="json", exclude_none=True)
    path.write_text(yaml.safe_dump({"directory": config}))
    return path


@pytest.fixture(scope="module")
def server(directory: LabDirectoryInfo, etcd: EmbeddedEtcd, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("idserver")
    etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")
    proc = start(base / "data", etcd, "--directory", str(directory_file(base / "dir.yaml", directory)),
                 "--session-ttl", "3600")
    try:
        yield proc
    finally:
        proc.stop()


class Cli:
    """The CLI as one person: their own config file (the admin's copied, so it knows the server and CA)."""

    def __init__(self, config: Path, home: Path, name: str) -> None:
        self.config = home / f"{name}.json"
        admin = json.loads(config.read_text())
        if name != "admin":
            admin["token"] = None
        self.config.write_text(json.dumps(admin))
        self.env = {**os.environ, "VIRTPLANE_CONFIG": str(self.config)}
        self.env.pop("VIRTPLANE_TOKEN", None)
        self.env.pop("VIRTPLANE_SERVER", None)

    def __call__(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([VIRTPLANE, *args], env=self.env, input=input, capture_output=True, text=True,
                              timeout=120, check=False, cwd=REPO)


@pytest.fixture
def people(server: ServerProcess, tmp_path: Path, etcd: EmbeddedEtcd) -> dict[str, Cli]:
    admin = Cli(admin_config(server), tmp_path, "admin")
    bindings = tmp_path / "rbac.yaml"
    bindings.write_text(ROLEBINDINGS)
    done = admin("apply", "-f", str(bindings))
    assert done.returncode == 0, done.stderr
    names = ("bob", "carol", "dave", "alice", "mallory")
    return {name: Cli(admin_config(server), tmp_path, name) for name in names} | {"admin": admin}


def login(cli: Cli, info: LabDirectoryInfo, name: str, password: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    return cli("login", "--username", name, input=(password if password is not None else info.user(name).password())
               + "\n")


def test_login_stores_a_session_with_the_directory_groups(server: ServerProcess, people: dict[str, Cli],
                                                          directory: LabDirectoryInfo) -> None:
    bob = people["bob"]
    done = login(bob, directory, "bob")
    assert done.returncode == 0, done.stderr
    assert "logged in as bob (virtplane-operators, virtplane-viewers)" in done.stdout
    assert oct(bob.config.stat().st_mode & 0o777) == "0o600"
    stored = json.loads(bob.config.read_text())
    assert stored["token"].startswith("vps_") and stored["user"] == "bob"
    who = bob("auth", "whoami")
    assert who.returncode == 0 and who.stdout.startswith("bob") and "session:" in who.stdout


@pytest.mark.parametrize(("name", "password", "reason"), [
    ("bob", "not-the-password", "wrong-password"),
    ("mallory", None, "locked"),
    ("nosuchuser", "whatever", "unknown-user"),
])
def test_refused_logins_say_little_and_are_audited_with_the_reason(
    people: dict[str, Cli], directory: LabDirectoryInfo, name: str, password: str | None, reason: str
) -> None:
    cli = people["bob"]
    secret = password if password is not None else directory.user(name).password()
    done = login(cli, directory, name, secret)
    assert done.returncode == 5
    assert "login refused: wrong username or password, or the account cannot log in" in done.stderr
    assert json.loads(cli.config.read_text())["token"] is None  # nothing stored
    audit = people["admin"]("audit", "--user", name)
    last = [line for line in audit.stdout.splitlines() if " login " in line][-1]
    assert "DENIED" in last and reason in last and "401" in last


def sdk(cli: Cli) -> Client:
    """The Python SDK with the person's CLI config (their session token, the server's CA)."""
    config = json.loads(cli.config.read_text())
    return Client(config["server"], config["token"], ca=config["ca"])


def test_roles_by_group_allow_and_deny_each_verb(people: dict[str, Cli], directory: LabDirectoryInfo) -> None:
    for name in ("bob", "carol", "dave"):
        assert login(people[name], directory, name).returncode == 0
    expected = {
        # operator in prod (bob directly, dave through sre -> virtplane-operators), viewer everywhere
        "bob": {"get": True, "list": True, "watch": True, "create": True, "update": True, "delete": True},
        "dave": {"get": True, "list": True, "watch": True, "create": True, "update": True, "delete": True},
        "carol": {"get": True, "list": True, "watch": True, "create": False, "update": False, "delete": False},
    }
    for name, verbs in expected.items():
        with sdk(people[name]) as api:
            for verb, allowed in verbs.items():
                assert api.can_i(verb, "vm", "prod")["allowed"] is allowed, (name, verb)
            # operators may not touch hosts, nor VMs of another cluster
            assert not api.can_i("create", "host", "prod")["allowed"]
            assert not api.can_i("delete", "vm", "dev")["allowed"]
    # what a person sees on the command line
    yes, no = people["dave"]("auth", "can-i", "delete", "vm", "-n", "prod"), people["carol"]("auth", "can-i",
                                                                                          "delete", "vm")
    assert (yes.returncode, yes.stdout, no.returncode, no.stdout) == (0, "yes\n", 5, "no\n")


def test_a_per_cluster_binding_reads_its_cluster_only(people: dict[str, Cli], directory: LabDirectoryInfo,
                                                      tmp_path: Path) -> None:
    admin, jdoe = people["admin"], Cli(people["admin"].config, tmp_path, "jdoe")  # jdoe is in no group
    files = tmp_path / "objs.yaml"
    files.write_text(vm("web-prod", "prod") + "---\n" + vm("web-dev", "dev") + "---\n"
                     "apiVersion: virtplane.io/v1\nkind: RoleBinding\nmetadata: {name: jdoe}\n"
                     "spec: {role: operator, subjects: [{kind: User, name: jdoe}], clusters: [prod]}\n")
    assert admin("apply", "-f", str(files)).returncode == 0
    assert login(jdoe, directory, "jdoe").returncode == 0
    with sdk(jdoe) as api:
        deadline = time.monotonic() + 10  # the API's index follows a watch
        while not api.can_i("get", "vm", "prod")["allowed"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert [v["metadata"]["name"] for v in api.list("vms")] == ["web-prod"]
    assert jdoe("describe", "vm/web-prod").returncode == 0  # its events: a binding in prod is enough
    refused = jdoe("get", "vm", "web-dev")
    assert refused.returncode == 5 and "jdoe may not get VirtualMachine/web-dev" in refused.stderr
    assert jdoe("events").returncode == 5  # every event: a global binding only
    for name in ("web-prod", "web-dev"):
        assert admin("delete", f"vm/{name}").returncode == 0


def test_writes_are_checked_per_object_and_an_apply_is_refused_whole(
    people: dict[str, Cli], directory: LabDirectoryInfo, tmp_path: Path, etcd: EmbeddedEtcd
) -> None:
    bob, carol = people["bob"], people["carol"]
    assert login(bob, directory, "bob").returncode == 0
    assert login(carol, directory, "carol").returncode == 0
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(vm("web-prod", "prod") + "---\n" + vm("web-dev", "dev"))
    before = etcdctl_run(etcd.endpoint, "get", "--prefix", "/virtplane/specs/", "--keys-only")
    done = bob("apply", "-f", str(mixed))
    assert done.returncode == 5
    assert f"{mixed}:6:1: VirtualMachine/web-dev: may not create in cluster dev" in done.stderr
    assert "nothing was written" in done.stderr
    assert etcdctl_run(etcd.endpoint, "get", "--prefix", "/virtplane/specs/", "--keys-only") == before
    # the allowed half alone goes through; the user is on the object
    alone = tmp_path / "prod.yaml"
    alone.write_text(vm("web-prod", "prod"))
    assert bob("apply", "-f", str(alone)).returncode == 0
    stored = json.loads(etcdctl_run(etcd.endpoint, "get", "/virtplane/specs/VirtualMachine/web-prod",
                                    "--print-value-only"))
    assert stored["metadata"]["updatedBy"] == "bob"
    # a viewer reads it but may not delete it
    assert carol("get", "vm", "web-prod").returncode == 0
    refused = carol("delete", "vm/web-prod")
    assert refused.returncode == 5 and "carol may not delete VirtualMachine/web-prod in cluster prod" in refused.stderr
    assert bob("delete", "vm/web-prod").returncode == 0
    audit = people["admin"]("audit", "--user", "carol").stdout
    assert "delete" in audit and "DENIED" in audit and "VirtualMachine/web-prod" in audit


def test_logout_revokes_the_session_everywhere(people: dict[str, Cli], directory: LabDirectoryInfo) -> None:
    bob = people["bob"]
    assert login(bob, directory, "bob").returncode == 0
    token = json.loads(bob.config.read_text())["token"]
    assert bob("logout").returncode == 0
    assert json.loads(bob.config.read_text())["token"] is None
    reuse = bob("--token", token, "get", "vms")
    assert reuse.returncode == 5 and "missing, invalid or expired bearer token" in reuse.stderr


def test_sessions_expire_by_their_lease(directory: LabDirectoryInfo, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    short = start(tmp_path / "data", etcd, "--directory", str(directory_file(tmp_path / "d.yaml", directory)),
                  "--session-ttl", "4")
    try:
        # Through the API directly: a CLI start on this loaded machine can take longer than the TTL.
        cert = ssl.create_default_context(cafile=str(tmp_path / "data" / "tls" / "server.crt"))
        with httpx.Client(base_url=short.url, verify=cert, timeout=30) as http:
            sent = time.monotonic()
            made = http.post("/api/v1/login", json={"username": "bob", "password": directory.user("bob").password()})
            assert made.status_code == 200, made.text
            logged_in = time.monotonic()
            headers = {"Authorization": f"Bearer {made.json()['token']}"}
            first = http.get("/api/v1/auth/whoami", headers=headers)
            assert first.status_code == 200 or time.monotonic() - logged_in > 4, first.text
            deadline = logged_in + 30
            while (answer := http.get("/api/v1/auth/whoami", headers=headers)).status_code == 200:
                assert time.monotonic() < deadline, "the session outlived its 4 s TTL by 26 s"
                time.sleep(0.2)
            assert time.monotonic() - sent >= 3.9  # not before its time: it was made after `sent`
            assert answer.status_code == 401 and "expired bearer token" in answer.json()["error"]["message"]
    finally:
        short.stop()


def test_directory_down_is_a_clear_503_and_the_static_token_still_works(
    directory: LabDirectoryInfo, etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    config = directory_file(tmp_path / "d.yaml", directory, urls=(dead,), connect_timeout=1.0)
    srv = start(tmp_path / "data", etcd, "--directory", str(config))
    try:
        bob = Cli(admin_config(srv), tmp_path, "bob")
        done = login(bob, directory, "bob")
        assert done.returncode == 4
        assert "the directory cannot be reached (unreachable)" in done.stderr
        assert "API tokens and the server's static token still work" in done.stderr
        admin = Cli(admin_config(srv), tmp_path, "admin")
        assert admin("get", "vms").returncode == 0
    finally:
        srv.stop()


def test_tls_with_another_ca_is_refused(server: ServerProcess, people: dict[str, Cli], tmp_path: Path) -> None:
    other_ca, _ = make_ca(tmp_path / "other", "someone else's CA")
    admin = people["admin"]
    assert admin("get", "vms").returncode == 0
    done = admin("--ca", str(other_ca), "get", "vms")
    assert done.returncode == 4
    assert "is not trusted by the CA in the CLI config" in done.stderr
    plain = server.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
        httpx.get(f"{plain}/readyz", timeout=5)


def test_plain_http_is_refused_off_loopback(tmp_path: Path, etcd: EmbeddedEtcd) -> None:
    done = subprocess.run([VIRTPLANE, "server", "--listen", f"0.0.0.0:{free_port()}", "--data-dir",
                           str(tmp_path), "--etcd", etcd.endpoint, "--no-controllers", "--no-write-config"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "plain HTTP is only served on loopback" in done.stderr


def test_service_account_tokens_are_bound_used_and_revoked(people: dict[str, Cli], tmp_path: Path) -> None:
    admin = people["admin"]
    made = admin("token", "create", "ci", "--description", "pipeline")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("vpt_")
    ci = Cli(admin.config, tmp_path, "ci")
    assert ci("--token", secret, "auth", "can-i", "list", "vm").returncode == 5  # no binding yet
    binding = tmp_path / "ci.yaml"
    binding.write_text("apiVersion: virtplane.io/v1\nkind: RoleBinding\nmetadata: {name: ci}\nspec:\n"
                       "  role: viewer\n  subjects: [{kind: ServiceAccount, name: ci}]\n")
    assert admin("apply", "-f", str(binding)).returncode == 0
    deadline = time.monotonic() + 10  # the API's index follows a watch
    while ci("--token", secret, "auth", "can-i", "list", "vm").returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    token_id = admin("token", "list").stdout.splitlines()[1].split()[0]
    assert admin("token", "revoke", token_id).returncode == 0
    assert ci("--token", secret, "get", "vms").returncode == 5


def test_a_password_never_appears_in_logs_status_events_or_etcd(
    server: ServerProcess, people: dict[str, Cli], directory: LabDirectoryInfo, etcd: EmbeddedEtcd
) -> None:
    passwords = {name: directory.user(name).password() for name in ("bob", "carol", "mallory")}
    passwords["bind"] = directory.bind_password_file.read_text().strip()
    for name in ("bob", "carol"):
        assert login(people[name], directory, name).returncode == 0
    assert login(people["bob"], directory, "bob", "Wr0ng-" + passwords["bob"]).returncode == 5
    assert login(people["mallory"], directory, "mallory").returncode == 5
    wrong = "Wr0ng-" + passwords["bob"]
    everything = etcdctl_run(etcd.endpoint, "get", "--prefix", "/virtplane/")  # keys and values
    admin = people["admin"]
    seen = {
        "etcd": everything,
        "server log": server.log.read_text(),
        "events": admin("events").stdout,
        "audit": admin("audit").stdout,
        "status": admin("get", "rolebindings", "-o", "yaml").stdout,
    }
    assert "login" in seen["audit"] and "/virtplane/sessions/" in everything  # we looked where they would be
    for where, text in seen.items():
        for name, secret in [*passwords.items(), ("wrong", wrong)]:
            assert secret not in text, f"{name}'s password found in {where}"
    # nor a session secret: etcd keys are hashes
    assert json.loads(people["carol"].config.read_text())["token"] not in everything
