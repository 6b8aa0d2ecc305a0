"""`--etcd https://` with a CA, a client certificate and a key, against a real etcd started with TLS and
client-certificate authentication (certificates made by openssl here), checked with etcdctl."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.server.etcd import free_port
from controller.store import Store, StoreUnavailable, TlsFiles
from tests.e2e.conftest import start_server
from tests.e2e.helpers import Cli, wait_for


@dataclass
class TlsEtcd:
    endpoint: str
    ca: Path
    cert: Path
    key: Path

    def etcdctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/usr/bin/etcdctl", f"--endpoints={self.endpoint}", f"--cacert={self.ca}", f"--cert={self.cert}",
             f"--key={self.key}", *args],
            capture_output=True, text=True, env={"ETCDCTL_API": "3"}, timeout=30, check=False,
        )


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.pem"))


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEtcd]:
    d = tmp_path_factory.mktemp("tls-etcd")
    make_pki(d)
    client, peer = free_port(), free_port()
    endpoint = f"https://127.0.0.1:{client}"
    with (d / "etcd.log").open("ab") as log:
        proc = subprocess.Popen(
            ["/usr/bin/etcd", "--name", "tls", "--data-dir", str(d / "data"),
             "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
             "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
             f"http://127.0.0.1:{peer}", "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
             "--cert-file", str(d / "server.pem"), "--key-file", str(d / "server.key"),
             "--trusted-ca-file", str(d / "ca.pem"), "--client-cert-auth"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    etcd = TlsEtcd(endpoint, d / "ca.pem", d / "client.pem", d / "client.key")
    try:
        wait_for("the TLS etcd to answer", lambda: etcd.etcdctl("endpoint", "health").returncode == 0, 30)
        yield etcd
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_store_connects_with_a_client_certificate_only(tls_etcd: TlsEtcd) -> None:
    store = await Store.connect([tls_etcd.endpoint], tls=TlsFiles(tls_etcd.ca, tls_etcd.cert, tls_etcd.key))
    try:
        assert await store.revision() >= 1
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):  # etcd asks for a client certificate
        await Store.connect([tls_etcd.endpoint], tls=TlsFiles(tls_etcd.ca), timeout=3)
    with pytest.raises(ValueError, match="needs its CA"):
        await Store.connect([tls_etcd.endpoint])


def test_server_on_an_https_etcd(tls_etcd: TlsEtcd, tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--no-controllers", "--etcd", tls_etcd.endpoint,
                          "--etcd-cacert", str(tls_etcd.ca), "--etcd-cert", str(tls_etcd.cert),
                          "--etcd-key", str(tls_etcd.key))
    try:
        cli = Cli(server)
        doc = "apiVersion: virtplane.io/v1\nkind: Cluster\nmetadata: {name: tls}\nspec: {}\n"
        done = cli("apply", "-f", "-", input=doc)
        assert done.returncode == 0, done.stderr
        got = tls_etcd.etcdctl("get", "/virtplane/specs/Cluster/tls", "--keys-only")
        assert got.stdout.split() == ["/virtplane/specs/Cluster/tls"], got.stderr
    finally:
        server.stop()
