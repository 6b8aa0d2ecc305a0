"""The streamed apply (``application/x-ndjson``, controller/api/applybody.py) through a real server and etcd:
a stream that does not end properly writes nothing (checked with etcdctl), problems name the object's
position, and the CLI (which streams its files as it reads them) abandons the request on a problem it
finds after objects were sent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import ServerProcess, Vp, etcdctl_run
from tests.e2e.helpers import cluster_doc, vm_doc

NDJSON = {"Content-Type": "application/x-ndjson"}


def spec_keys(etcd: EmbeddedEtcd) -> list[str]:
    return etcdctl_run(etcd.endpoint, "get", "--prefix", "/virtplane/specs/", "--keys-only").split()


def lines(*docs: object, end: int | None = None) -> bytes:
    body = b"".join(json.dumps(d).encode() + b"\n" for d in docs)
    return body + (json.dumps({"end": end}).encode() + b"\n" if end is not None else b"")


def post(server: ServerProcess, body: bytes | Iterator[bytes], **params: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/apply", params=params, content=body,
        headers={**NDJSON, "Authorization": f"Bearer {server.token}"}, timeout=60,
    )


def answer(response: httpx.Response) -> tuple[list[dict[str, object]], dict[str, object]]:
    items = [json.loads(line) for line in response.text.splitlines() if line]
    changes = [i["change"] for i in items if "change" in i]
    summaries = [i["summary"] for i in items if "summary" in i]
    assert len(summaries) == 1 and "summary" in items[-1], items[-3:]
    return changes, summaries[0]


def test_stream_applies_and_answers_line_by_line(server: ServerProcess, vp: Vp, etcd: EmbeddedEtcd) -> None:
    docs = [cluster_doc("prod"), *(vm_doc(f"s-{i}", "prod") for i in range(3))]
    dry = post(server, lines(*docs, end=4), dryRun="true")
    assert dry.status_code == 200, dry.text
    assert dry.headers["content-type"].startswith("application/x-ndjson")
    changes, summary = answer(dry)
    assert [c["action"] for c in changes] == ["created"] * 4 and summary["dryRun"] is True
    assert spec_keys(etcd) == []  # a dry run

    done = post(server, lines(*docs, end=4))
    changes, summary = answer(done)
    assert [(c["kind"], c["name"], c["action"]) for c in changes][1] == ("VirtualMachine", "s-0", "created")
    assert summary["transactions"] == 1
    assert sorted(spec_keys(etcd)) == sorted(
        ["/virtplane/specs/Cluster/prod", *(f"/virtplane/specs/VirtualMachine/s-{i}" for i in range(3))]
    )
    again, _ = answer(post(server, lines(*docs, end=4)))
    assert {c["action"] for c in again} == {"unchanged"}
    docs[2]["spec"]["cpu"]["cores"] = 2
    counted, summary = answer(post(server, lines(*docs, end=4), dryRun="true", omitUnchanged="true"))
    assert [(c["name"], c["action"]) for c in counted] == [("s-1", "configured")] and summary["unchanged"] == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lines(cluster_doc("prod"), vm_doc("cut", "prod")), "without its end line"),
        (lines(cluster_doc("prod"), vm_doc("cut", "prod"), end=3), "counts 3 objects, the stream carried 2"),
        (lines(cluster_doc("prod"), end=1) + json.dumps(vm_doc("late", "prod")).encode(), "after the end line"),
        (lines(cluster_doc("prod")) + b'{"apiVersion": "virtplane.io/v1", "kind": "Virt', "inside a line"),
    ],
    ids=["no-end-line", "wrong-count", "after-end", "cut-mid-line"],
)
def test_a_stream_that_does_not_end_properly_writes_nothing(
    server: ServerProcess, vp: Vp, etcd: EmbeddedEtcd, body: bytes, message: str
) -> None:
    response = post(server, body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert "nothing was written" in response.json()["error"]["message"]
    assert spec_keys(etcd) == []


def test_problems_name_the_position_in_the_stream(server: ServerProcess, vp: Vp, etcd: EmbeddedEtcd) -> None:
    bad = vm_doc("bad", "prod")
    bad["spec"]["memory"] = {"size": "lots"}
    # 702 objects: the bad one is in the second batch the server validates
    body = lines(cluster_doc("prod"), *(vm_doc(f"ok-{i}", "prod") for i in range(700)), bad, end=702)
    response = post(server, body)
    assert response.status_code == 422, response.text
    problems = response.json()["error"]["details"]["problems"]
    assert [(p["index"], p["field"]) for p in problems] == [(701, "spec.memory.size")]
    not_json = post(server, lines(cluster_doc("prod")) + b"{not json}\n" + b'{"end": 2}\n')
    assert not_json.status_code == 422
    assert not_json.json()["error"]["details"]["problems"][0]["index"] == 1
    assert spec_keys(etcd) == []


def test_a_stream_the_client_abandons_writes_nothing(server: ServerProcess, vp: Vp, etcd: EmbeddedEtcd) -> None:
    def body() -> Iterator[bytes]:
        yield lines(cluster_doc("prod"), *(vm_doc(f"gone-{i}", "prod") for i in range(2000)))
        raise RuntimeError("the client gives up")

    with pytest.raises(RuntimeError, match="gives up"):
        post(server, body())
    assert spec_keys(etcd) == []
    assert post(server, lines(cluster_doc("prod"), end=1)).status_code == 200  # the server is fine


def test_cli_problem_found_after_objects_were_sent_writes_nothing(
    vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path
) -> None:
    """The CLI sends each object as soon as it is read: 3,000 valid documents (~1 MB, many chunks) are on
    their way when it reads the bad last one (a name used twice: only the files can tell); the request is
    abandoned, the error is located, exit 2, nothing stored."""
    docs = [cluster_doc("prod"), *(vm_doc(f"vm-{i:04d}", "prod") for i in range(3000))]
    text = "".join("---\n" + json.dumps(d) + "\n" for d in docs)  # JSON is YAML: one document per line
    text += "---\napiVersion: virtplane.io/v1\nkind: VirtualMachine\nmetadata:\n  name: vm-0007\nspec: {}\n"
    path = tmp_path / "big.yaml"
    path.write_text(text)
    done = vp("apply", "-f", str(path))
    assert done.returncode == 2, done.stdout[-500:] + done.stderr
    assert f"big.yaml:{2 * len(docs) + 5}:9: metadata.name: VirtualMachine 'vm-0007' is defined twice" in done.stderr
    assert "nothing was written" in done.stderr
    assert spec_keys(etcd) == []


def test_cli_server_refusal_is_located_in_the_file(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """What the server judges (the models, host paths) comes back by position, worded as the CLI words its
    own problems, and is located in the file."""
    docs = [cluster_doc("prod"), *(vm_doc(f"vm-{i}", "prod") for i in range(600))]
    text = "".join("---\n" + json.dumps(d) + "\n" for d in docs)
    text += (
        "---\napiVersion: virtplane.io/v1\nkind: VirtualMachine\nmetadata: {name: evil}\nspec:\n  cluster: prod\n"
        "  cpu: {cores: 1}\n  memory: {size: 64Mi}\n  boot:\n    kernel: /etc/shadow\n"
    )
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    done = vp("apply", "-f", str(path))
    assert done.returncode == 2, done.stderr
    assert f"evil.yaml:{2 * len(docs) + 10}:13: spec.boot.kernel" in done.stderr, done.stderr
    assert spec_keys(etcd) == []

    head = "".join("---\n" + json.dumps(d) + "\n" for d in docs)
    path.write_text(head + (
        "---\napiVersion: virtplane.io/v1\nkind: VirtualMachine\nmetadata: {name: evil}\nspec:\n  cluster: prod\n"
        "  cpu: {cores: 1}\n  colour: blue\n  memory: {size: lots}\n"
    ))
    done = vp("apply", "-f", str(path))
    assert done.returncode == 2, done.stderr
    line = 2 * len(docs) + 8
    unknown = f"evil.yaml:{line}:3: spec.colour: unknown field 'colour' (did you mean 'cluster'?)"
    assert unknown in done.stderr, done.stderr
    assert done.stderr.index(unknown) < done.stderr.index("spec.memory.size"), "in file order"
    assert re.search(rf"evil\.yaml:{line + 1}:\d+: spec\.memory\.size: expected a size like", done.stderr), done.stderr
    assert spec_keys(etcd) == []


def test_cli_reports_every_problem_at_once(vp: Vp, etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """A problem only the files can show (a server-set field, in the last document) ends the request before
    the server has judged the models of the documents already sent: the CLI then validates those itself, so
    one run lists every problem, in file order."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: virtplane.io/v1\nkind: Cluster\nmetadata:\n  name: prod\nspec: {}\n---\n"
        "apiVersion: virtplane.io/v1\nkind: VirtualMachine\nmetadata:\n  name: web-1\nspec:\n  cluster: prod\n"
        "  cpu: {cores: 2}\n  memroy: {size: 1Gi}\n  memory: {size: lots}\n---\n"
        "apiVersion: virtplane.io/v1\nkind: VirtualMachine\nmetadata:\n  name: web-2\n  uid: abc\nspec:\n"
        "  cluster: prod\n  cpu: {cores: 1}\n  memory: {size: 1Gi}\n"
    )
    done = vp("apply", "-f", str(path))
    assert done.returncode == 2, done.stderr
    located = [line.split(": ")[0].rsplit("/", 1)[-1] + " " + line.split(": ")[1] for line in done.stderr.splitlines()
               if line.startswith("/")]
    assert located == ["bad.yaml:14:3 spec.memroy", "bad.yaml:15:18 spec.memory.size", "bad.yaml:21:3 metadata.uid"]
    assert "3 problem(s) in the input; nothing was written" in done.stderr
    assert spec_keys(etcd) == []
