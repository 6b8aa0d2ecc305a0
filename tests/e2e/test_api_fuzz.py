"""Schemathesis against /openapi.json of a real server on a real etcd (issue 9): whatever it sends, the
answer is never a 500, its status code is one the document lists for that operation, and a JSON answer
matches the documented schema. Bounded: a few examples per operation (VIRTPLANE_FUZZ_EXAMPLES to raise).

The two endless streams (GET /api/v1/watch and events with watch=true) are left out: a fuzzer's request
would wait on them forever; tests/controller/api covers their bad parameters (400)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from controller.server.etcd import EmbeddedEtcd
from tests.e2e.conftest import ServerProcess, etcdctl_run

EXAMPLES = int(os.environ.get("VIRTPLANE_FUZZ_EXAMPLES", "8"))


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(server: ServerProcess, mode: GenerationMode) -> list[str]:
    """Drive every operation with Hypothesis (schemathesis's strategies; its pytest plugin does not run
    under this pytest); returns the failures as text."""
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json").exclude(path="/api/v1/watch")
    failures: list[str] = []
    headers = {"Authorization": f"Bearer {server.token}"}
    for result in api.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.generate])
        def run(case: schemathesis.Case) -> None:
            if case.path == "/api/v1/events" and case.query:
                case.query.pop("watch", None)
            case.call_and_validate(base_url=server.url, headers=headers, timeout=30, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            continue  # negative mode, an operation with no input to make invalid (GET /healthz)
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_never_answers_500_nor_off_document(
    server: ServerProcess, etcd: EmbeddedEtcd, mode: GenerationMode
) -> None:
    failures = fuzz(server, mode)
    assert not failures, "\n\n".join(failures)


def test_fuzzing_left_the_store_usable(server: ServerProcess, etcd: EmbeddedEtcd) -> None:
    """Whatever the fuzzer stored can be listed and deleted through the API."""
    import httpx

    headers = {"Authorization": f"Bearer {server.token}"}
    for plural in ("clusters", "hosts", "virtualmachines", "disks"):
        r = httpx.get(f"{server.url}/api/v1/{plural}", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        for item in r.json()["items"]:
            d = httpx.delete(f"{server.url}/api/v1/{plural}/{item['metadata']['name']}", headers=headers, timeout=30)
            assert d.status_code == 200, d.text
    etcdctl_run(etcd.endpoint, "del", "--prefix", "/virtplane/")
