"""The console's pure parts: cells and bars of a row, CSRF tokens, where a login may send you, where a live
stream resumes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request

from controller.ui.app import _safe_next
from controller.ui.live import _sse, start_revision
from controller.ui.render import EXTRA, Bar, bar_value, cell, columns, human_bytes
from controller.ui.session import csrf_ok, csrf_token
from specs.kinds import KINDS, Column

HOST = {"metadata": {"name": "h1"}, "spec": {"maintenance": False, "cluster": "prod"},
        "status": {"phase": "Ready", "capacity": {"cpus": 64, "memory": 256 << 30},
                   "allocation": {"cpus": 16, "memory": 64 << 30}}}


@pytest.mark.parametrize(("bar", "obj", "percent", "label"), [
    (EXTRA["Host"][0], HOST, 25, "16 / 64 (25%)"),
    (EXTRA["Host"][1], HOST, 25, "64.0 GiB / 256.0 GiB (25%)"),
    (EXTRA["StorageDomain"][0], {"status": {"capacity": 100 << 30, "available": 75 << 30}}, 25,
     "25.0 GiB / 100.0 GiB (25%)"),
    (Bar("PROGRESS", "status.percent"), {"status": {"percent": 42}}, 42, "42%"),
    (Bar("PROGRESS", "status.percent"), {"status": {}}, None, "—"),  # not started: no bar value
    (EXTRA["Host"][0], {"status": {"capacity": {"cpus": 0}, "allocation": {"cpus": 1}}}, None, "—"),  # no /0
    (EXTRA["Host"][0], {"status": {"capacity": {"cpus": 4}, "allocation": {"cpus": 8}}}, 100, "8 / 4 (100%)"),
])
def test_bars(bar: Column | Bar, obj: dict, percent: int | None, label: str) -> None:  # type: ignore[type-arg]
    assert isinstance(bar, Bar)
    assert bar_value(obj, bar) == {"percent": percent, "label": label}


def test_host_row_has_get_columns_then_bars_and_paths_for_live_updates() -> None:
    cols = columns(KINDS["Host"])
    headers = [c.header for c in cols]
    assert headers[:5] == ["NAME", "CLUSTER", "PHASE", "MAINTENANCE", "VMS"] and "AGE" not in headers
    assert headers[-4:] == ["CPU allocated", "Memory allocated", "POWER", "POWER STATE"]
    cells = {c.header: cell(HOST, c) for c in cols}
    assert cells["MAINTENANCE"] == {"bar": False, "path": "spec.maintenance", "text": "no", "unit": ""}
    assert cells["MEMORY"]["text"] == "256.0 GiB" and cells["MEMORY"]["unit"] == "bytes"
    assert cells["CPU allocated"]["num"] == "status.allocation.cpus" and cells["CPU allocated"]["percent"] == 25


def test_migration_progress_is_a_bar() -> None:
    progress = next(c for c in columns(KINDS["Migration"]) if c.header == "PROGRESS")
    assert isinstance(progress, Bar) and progress.num == "status.percent" and progress.den is None


def test_human_bytes() -> None:
    assert [human_bytes(v) for v in (512, 1536, 5 << 20, None)] == ["512 B", "1.5 KiB", "5.0 MiB", ""]


def test_csrf_token_belongs_to_one_session() -> None:
    token = csrf_token("vps_secret-a")
    assert csrf_ok("vps_secret-a", token)
    assert not csrf_ok("vps_secret-b", token)
    assert not csrf_ok("vps_secret-a", "") and not csrf_ok(None, token) and not csrf_ok("vps_secret-a", None)


@pytest.mark.parametrize(("given", "target"), [
    ("/ui/hosts/?page=2", "/ui/hosts/?page=2"), ("https://evil.example/", "/ui/"), ("//evil.example/ui/", "/ui/"),
    ("/api/v1/vms", "/ui/"), (None, "/ui/"),
])
def test_a_login_only_sends_you_into_the_console(given: object, target: str) -> None:
    assert _safe_next(given) == target


def request(headers: dict[str, str], query: str = "") -> Request:
    return Request({"type": "http", "method": "GET", "path": "/ui/stream", "query_string": query.encode(),
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_the_stream_resumes_after_the_last_event_the_browser_saw() -> None:
    assert start_revision(request({}, "resourceVersion=41")) == "41"
    assert start_revision(request({"Last-Event-ID": "57"}, "resourceVersion=41")) == "58"
    assert start_revision(request({"Last-Event-ID": "junk"}, "resourceVersion=x")) is None


async def lines(*events: str) -> AsyncIterator[bytes]:
    for event in events:
        yield event.encode()


@pytest.mark.anyio
async def test_a_page_receives_the_changes_of_its_objects_and_new_objects_of_its_list() -> None:
    events = ('{"kind": "Host", "name": "h1", "part": "status", "revision": 7, "object": {"revision": 3}}',
              '{"kind": "Host", "name": "h2", "part": "status", "revision": 8, "object": {}}',
              '{"kind": "Host", "name": "h3", "part": "spec", "revision": 9, "object": {}}')
    sent = [m async for m in _sse(lines(*events), frozenset({"Host/h1"}), "Host")]
    assert sent[0].startswith(b"retry: 1000\n")
    assert [m.split(b"\n")[0] for m in sent[1:]] == [b"id: 7", b"id: 9"]  # not h2's status
    assert sent[1] == b"id: 7\ndata: " + events[0].encode() + b"\n\n"
    assert len([m async for m in _sse(lines(*events), frozenset({"Host/h1"}), None)]) == 2
    assert len([m async for m in _sse(lines(*events), frozenset(), None)]) == 4  # no filter: everything
