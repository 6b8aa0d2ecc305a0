"""A pure model of what libvirt does with each action, for the plan -> execute -> re-plan property.

Faithful to the parts the planner reads: persistent vs live config, state and reason, owner stamp.
"""

from __future__ import annotations

from dataclasses import replace

from reconcilers.domain import DomainUUID, HostName, MacAddress, ObservedDomain
from reconcilers.migration import actions as m
from reconcilers.plan import Plan
from reconcilers.vm import actions as a


def _fill(config, uuid: str, n: int):  # type: ignore[no-untyped-def]
    nics = tuple(
        replace(nic, mac=nic.mac or MacAddress(f"52:54:00:00:{n:02x}:{i:02x}")) for i, nic in enumerate(config.nics)
    )
    return replace(config, uuid=config.uuid or DomainUUID(uuid), nics=nics)


def apply_plan(plan: Plan, domains: dict[HostName, ObservedDomain]) -> dict[HostName, ObservedDomain]:
    out = dict(domains)
    for action in plan:
        match action:
            case a.DefineDomain(host=h, config=config):
                old = out.get(h)
                uuid = old.uuid if old else DomainUUID(f"00000000-0000-0000-0000-{len(out):012d}")
                filled = _fill(config, uuid, len(out))
                if old is None:
                    out[h] = ObservedDomain(
                        h, config.name, filled.uuid or uuid, "shutoff", "unknown", True, filled, None, filled.owner
                    )
                else:
                    out[h] = replace(old, config=filled, persistent=True, owner=filled.owner)
            case a.StampOwner(host=h, owner=owner, live=live):
                # virDomainSetMetadata: only the owner stamp changes, in the definition (and the live domain).
                d = out[h]
                assert d.config is not None
                out[h] = replace(d, owner=owner, config=replace(d.config, owner=owner),
                                 live=replace(d.live, owner=owner) if live and d.live is not None else d.live)
            case a.StartDomain(host=h):
                d = out[h]
                out[h] = replace(d, state="running", reason="booted", live=d.config)
            case a.ShutdownDomain(host=h) | a.DestroyDomain(host=h):
                d = out[h]
                out[h] = replace(d, state="shutoff", reason="shutdown", live=None)
            case a.UndefineDomain(host=h):
                d = out[h]
                if d.active:
                    out[h] = replace(d, persistent=False, config=None)
                else:
                    del out[h]
            case a.AttachDisk(host=h, disk=disk):
                d = out[h]
                assert d.live is not None
                out[h] = replace(d, live=replace(d.live, disks=(*d.live.disks, disk)))
            case a.DetachDisk(host=h, disk=disk):
                d = out[h]
                assert d.live is not None
                out[h] = replace(
                    d, live=replace(d.live, disks=tuple(x for x in d.live.disks if x.source != disk.source))
                )
            case a.AttachNic(host=h, nic=nic):
                d = out[h]
                assert d.live is not None and d.config is not None
                mac = nic.mac or next((n.mac for n in d.config.nics if n.name == nic.name), None)
                out[h] = replace(d, live=replace(d.live, nics=(*d.live.nics, replace(nic, mac=mac))))
            case a.DetachNic(host=h, nic=nic):
                d = out[h]
                assert d.live is not None
                out[h] = replace(d, live=replace(d.live, nics=tuple(x for x in d.live.nics if x.name != nic.name)))
            case a.SetMemory(host=h, memory_kib=kib):
                d = out[h]
                assert d.live is not None and d.config is not None
                out[h] = replace(d, live=replace(d.live, memory_kib=kib), config=replace(d.config, memory_kib=kib))
            case a.SetVcpus(host=h, vcpus=n):
                d = out[h]
                assert d.live is not None and d.config is not None
                out[h] = replace(d, live=replace(d.live, vcpus=n), config=replace(d.config, vcpus=n))
            case m.MigrateDomain(host=h, target_host=t):
                # Live migration with PERSIST_DEST | UNDEFINE_SOURCE: the running guest and its persistent
                # config are on the target afterwards, and nothing is left on the source.
                d = out.pop(h)
                assert d.active and t not in out, "migrating a guest that is not running, or onto a copy"
                out[t] = replace(d, host=t, persistent=True, job=None)
            case m.StartPostCopy() | m.AbortMigration():
                pass  # they act on a job in flight; the outcome is observed later
            case _:
                raise AssertionError(f"simulator has no rule for {action.name}")
    return out
