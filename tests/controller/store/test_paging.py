"""A page of a kind's objects read from a real etcd: forward, back, with a selector, statuses of the page."""

from __future__ import annotations

import pytest

from controller.store import Store
from specs.selector import LabelSelector
from specs.vm import VirtualMachineStatus
from tests.controller.store.test_store import vm

pytestmark = pytest.mark.anyio


def names(page: object) -> list[str]:
    return [r.metadata.name for r in page.items]  # type: ignore[attr-defined]


async def test_pages_forward_and_back_with_the_statuses_of_the_page(store: Store) -> None:
    await store.apply([vm(f"vm-{i:02d}", labels={"tier": "web" if i % 3 == 0 else "db"}) for i in range(25)],
                      correlation_id="c")
    await store.apply([vm("other")], correlation_id="c")  # another name range, same kind
    for i in (9, 10, 11, 24):
        await store.put_status("VirtualMachine", f"vm-{i:02d}", VirtualMachineStatus(phase="Running",
                                                                                    host=f"h{i}"), 0)
    first = await store.list_page("VirtualMachine", limit=10)
    assert names(first) == ["other"] + [f"vm-{i:02d}" for i in range(9)]
    assert (first.total, first.more_before, first.more_after) == (26, False, True)
    assert first.statuses == {}
    second = await store.list_page("VirtualMachine", limit=10, after="vm-08")
    assert names(second) == [f"vm-{i:02d}" for i in range(9, 19)]
    assert (second.more_before, second.more_after) == (True, True)
    assert {n: s.host for n, s in second.statuses.items()} == {"vm-09": "h9", "vm-10": "h10", "vm-11": "h11"}
    last = await store.list_page("VirtualMachine", limit=10, after="vm-18")
    assert names(last) == [f"vm-{i:02d}" for i in range(19, 25)] and not last.more_after
    assert set(last.statuses) == {"vm-24"}
    back = await store.list_page("VirtualMachine", limit=10, before="vm-19")
    assert names(back) == names(second) and back.more_before and back.more_after

    web = await store.list_page("VirtualMachine", limit=3, after="vm-03",
                                selector=LabelSelector.parse("tier=web"))
    assert names(web) == ["vm-06", "vm-09", "vm-12"] and web.total == 9
    assert (web.more_before, web.more_after) == (True, True)
    assert set(web.statuses) == {"vm-09"}
    assert (await store.list_page("Host", limit=5)).items == []
