"""GlusterVolume controller: the volume created, started, configured and expanded through glusterd's CLI
(``controller.adapters.gluster``), its bricks' state in status; deleted only when no StorageDomain uses it
(the finalizer stays, and the status says why, until then)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controller.adapters.gluster import GlusterCli
from controller.common.errors import ReconcileError
from controller.controllers.common import own_cluster, refuse_disallowed_paths
from controller.runtime.context import Runtime
from controller.runtime.registry import Controller, Handler, Preview, Watch
from controller.runtime.workqueue import Result
from controller.store import Change
from reconcilers.conditions import cond
from reconcilers.gluster.actions import (
    AddGlusterBricks,
    CreateGlusterVolume,
    DeleteGlusterVolume,
    SetGlusterOption,
    StartGlusterVolume,
)
from reconcilers.gluster.plan import GlusterPlan, ObservedGlusterVolume, plan_gluster_volume
from reconcilers.plan import Plan
from specs.gluster import GlusterBrickStatus, GlusterVolume, GlusterVolumeStatus
from specs.storage import StorageDomain

FINALIZER = "virtplane.io/gluster-volume"
REFRESH = 60.0


def cli_for(rt: Runtime, vol: GlusterVolume) -> GlusterCli:
    if rt.glusterd_socket is not None:
        return GlusterCli(socket=rt.glusterd_socket)
    return GlusterCli(remote_host=vol.spec.bricks[0].host)


def domains_using(rt: Runtime, volume: str) -> tuple[str, ...]:
    return tuple(sorted(sd.metadata.name for sd in rt.cache.all("StorageDomain", StorageDomain)
                        if sd.spec.gluster is not None and sd.spec.gluster.volume == volume))


async def _plan(rt: Runtime, vol: GlusterVolume) -> tuple[GlusterPlan, ObservedGlusterVolume | None]:
    observed = await cli_for(rt, vol).info(vol.metadata.name)
    return plan_gluster_volume(vol, observed, domains_using(rt, vol.metadata.name)), observed


def _status(rt: Runtime, vol: GlusterVolume, phase: str, ready: bool, reason: str, message: str,
            **fields: Any) -> GlusterVolumeStatus:
    prev = rt.cache.status["GlusterVolume"].get(vol.metadata.name)
    return GlusterVolumeStatus(observedGeneration=vol.metadata.generation, phase=phase,
                               conditions=rt.with_times((cond("Ready", ready, reason, message),), prev), **fields)


async def reconcile_gluster_volume(rt: Runtime, name: str) -> Result | None:
    vol = rt.cache.get("GlusterVolume", name, GlusterVolume)
    if vol is None:
        return None
    deleting = vol.metadata.deletionTimestamp is not None
    if not deleting:
        await refuse_disallowed_paths(rt, vol, "gluster-controller")
        vol = await rt.ensure_finalizer(vol, FINALIZER)
    cli = cli_for(rt, vol)
    try:
        planned, observed = await _plan(rt, vol)
    except ReconcileError as err:
        await rt.write_status("GlusterVolume", name, _status(rt, vol, "Pending", False, "GlusterdUnreachable",
                                                             str(err)))
        raise
    if planned.refused is not None:
        phase = "Deleting" if deleting else ("Started" if observed and observed.status == "Started" else "Failed")
        reason = "InUse" if deleting else "Unsupported"
        await rt.write_status("GlusterVolume", name, _status(rt, vol, phase, False, reason, planned.refused))
        await rt.emit(vol, reason, planned.refused, warning=True, source="gluster-controller")
        return Result(requeue_after=5.0) if deleting else None
    if planned.plan and not cli.writable:
        message = ("glusterd accepts changes only on its local socket: run the server with --glusterd-socket "
                   f"(wanted: {'; '.join(f'{a.name} {a.target()}' for a in planned.plan)})")
        await rt.write_status("GlusterVolume", name, _status(rt, vol, "Pending", False, "ReadOnly", message))
        return None
    if planned.plan:
        result = await rt.executor.execute(planned.plan, rt)
        if not result.ok:
            assert result.error is not None and result.failed is not None
            message = f"{result.failed.name} {result.failed.target()}: {result.error}"
            await rt.emit(vol, "GlusterFailed", message, warning=True, source="gluster-controller")
            await rt.write_status("GlusterVolume", name, _status(rt, vol, "Failed", False, "GlusterFailed", message))
            raise result.error
        await rt.emit(vol, "PlanExecuted", result.describe_done(), source="gluster-controller")
    if deleting:
        await rt.store.remove_finalizer("GlusterVolume", name, FINALIZER)
        return None
    observed = await cli.info(name)
    if observed is None:
        return Result(requeue=True)
    bricks = await cli.brick_states(name)
    offline = [b.brick for b in bricks if not b.online]
    started = observed.status == "Started"
    ok = started and bool(bricks) and not offline
    message = f"volume is {observed.status}"
    if started:
        message = f"{observed.type}, {len(observed.bricks)} bricks" + (f"; offline: {', '.join(offline)}" if offline
                                                                       else "")
    await rt.write_status("GlusterVolume", name, _status(
        rt, vol, "Started" if started else "Stopped", ok, "Started" if ok else "BricksOffline", message,
        volumeId=observed.volume_id, type=observed.type,
        bricks=tuple(GlusterBrickStatus(brick=b.brick, online=b.online, port=b.port, pid=b.pid) for b in bricks),
        options={k: observed.options.get(k, "") for k in vol.spec.options}))
    return Result(requeue_after=REFRESH)


async def _create(a: CreateGlusterVolume, rt: Runtime) -> None:
    await GlusterCli(socket=rt.glusterd_socket).create(a.volume, a.bricks, a.replica, a.arbiter, a.force)


async def _start(a: StartGlusterVolume, rt: Runtime) -> None:
    await GlusterCli(socket=rt.glusterd_socket).start(a.volume)


async def _set(a: SetGlusterOption, rt: Runtime) -> None:
    await GlusterCli(socket=rt.glusterd_socket).set_option(a.volume, a.key, a.value)


async def _add(a: AddGlusterBricks, rt: Runtime) -> None:
    await GlusterCli(socket=rt.glusterd_socket).add_bricks(a.volume, a.bricks, a.replica, a.force)


async def _delete(a: DeleteGlusterVolume, rt: Runtime) -> None:
    await GlusterCli(socket=rt.glusterd_socket).stop_and_delete(a.volume)


async def preview_gluster_volume(rt: Runtime, change: Change) -> Preview:
    vol = change.after if isinstance(change.after, GlusterVolume) else None
    if vol is None and change.action == "deleted":
        current = rt.cache.get("GlusterVolume", change.name, GlusterVolume)
        if current is not None:
            vol = current.model_copy(update={"metadata": current.metadata.model_copy(
                update={"deletionTimestamp": rt.clock()})})
    if vol is None:
        return Preview(Plan())
    try:
        planned, _ = await _plan(rt, vol)
    except ReconcileError as err:
        return Preview(Plan(), note=f"waiting: {err}")
    return Preview(planned.plan, note=f"refused: {planned.refused}" if planned.refused else None)


def _volume_of_domain(rt: Runtime, sd: str, before: Any, after: Any) -> Iterable[str]:
    """A StorageDomain going away may release a volume waiting to be deleted."""
    names = {getattr(getattr(o, "spec", None), "gluster", None) for o in (before, after)}
    return [n.volume for n in names if n is not None and rt.cache.specs["GlusterVolume"].get(n.volume)]


HANDLERS: dict[type, Handler] = {
    CreateGlusterVolume: _create, StartGlusterVolume: _start, SetGlusterOption: _set, AddGlusterBricks: _add,
    DeleteGlusterVolume: _delete,
}

CONTROLLER = Controller(
    kind="GlusterVolume",
    reconcile=reconcile_gluster_volume,
    scope=own_cluster,
    finalizer=FINALIZER,
    watches=(Watch("StorageDomain", "spec", _volume_of_domain),),
    plan=preview_gluster_volume,
    handlers=HANDLERS,
)
