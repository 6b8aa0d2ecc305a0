"""A page of a kind's objects read from a real etcd: forward, back, statuses of the page, one revision."""

from __future__ import annotations

import pytest

from controller.store import Page, RevisionCompacted, Store
from specs.vm import VirtualMachineStatus
from tests.controller.store.test_store import vm

pytestmark = pytest.mark.anyio


def names(page: Page) -> list[str]:
    return [r.metadata.name for r, _ in page.items]


def hosts(page: Page) -> dict[str, str | None]:
    return {r.metadata.name: st.host for r, st in page.items if isinstance(st, VirtualMachineStatus)}


async def test_pages_forward_and_back_with_the_statuses_of_the_page(store: Store) -> None:
    await store.apply([vm(f"vm-{i:02d}") for i in range(25)], correlation_id="c")
    await store.apply([vm("other")], correlation_id="c")  # another name range, same kind
    for i in (9, 10, 11, 24):
        await store.put_status("VirtualMachine", f"vm-{i:02d}", VirtualMachineStatus(phase="Running",
                                                                                    host=f"h{i}"), 0)
    first = await store.list_page("VirtualMachine", limit=10)
    assert names(first) == ["other"] + [f"vm-{i:02d}" for i in range(9)]
    assert first.previous_before is None and first.next_start is not None
    assert hosts(first) == {} and await store.count("VirtualMachine", first.revision) == 26
    second = await store.list_page("VirtualMachine", limit=10, start=first.next_start, revision=first.revision)
    assert names(second) == [f"vm-{i:02d}" for i in range(9, 19)]
    assert second.previous_before == "vm-09" and second.next_start is not None
    assert hosts(second) == {"vm-09": "h9", "vm-10": "h10", "vm-11": "h11"}
    last = await store.list_page("VirtualMachine", limit=10, start=second.next_start, revision=first.revision)
    assert names(last) == [f"vm-{i:02d}" for i in range(19, 25)] and last.next_start is None
    assert set(hosts(last)) == {"vm-24"}
    back = await store.list_page("VirtualMachine", limit=10, before="vm-19", revision=first.revision)
    assert names(back) == names(second) and back.previous_before == "vm-09" and back.next_start == "vm-19"
    assert (await store.list_page("Host", limit=5)).items == []


async def test_later_pages_read_the_first_pages_revision(store: Store) -> None:
    await store.apply([vm(f"vm-{i:02d}") for i in range(6)], correlation_id="c")
    first = await store.list_page("VirtualMachine", limit=3)
    await store.apply([vm("vm-04b")], correlation_id="c")  # written after the first page: not in this list
    rest = await store.list_page("VirtualMachine", limit=3, start=first.next_start or "", revision=first.revision)
    assert names(rest) == ["vm-03", "vm-04", "vm-05"] and rest.revision == first.revision
    await store.compact(await store.revision())
    with pytest.raises(RevisionCompacted):
        await store.list_page("VirtualMachine", limit=3, start=first.next_start or "", revision=first.revision)
