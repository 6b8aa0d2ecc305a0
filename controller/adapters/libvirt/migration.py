"""Live migration on libvirt hosts: the blocking calls, and the registry of migrations in flight.

A migration runs for seconds to minutes, so it is started and observed, never awaited by a worker:
``Migrations.start`` takes the libvirt connections of both hosts, runs ``migrate_blocking`` in its own
thread (outside the hosts' call limiters, which stay free for observation) and returns at once. When the
thread ends, the outcome is handed to the event loop (``on_finish``), which requeues the VM; the VM
controller then collects it (``Migrations.collect``) and reports it. Meanwhile the planner sees the job
through ``Migrations.in_flight`` and the source domain's job stats (``ObservedDomain.job``).

Peer to peer (the cluster policy's default, ``settings.peer_uri`` set): the source libvirtd connects to the
target's libvirt URI and drives every phase itself (``migrateToURI3`` with ``VIR_MIGRATE_PEER2PEER``), so the
switch-over never waits for this process, and a migration goes on if the controller restarts. Otherwise
libvirt's client library in this process relays between the two hosts (``migrate3``).

Flags: ``VIR_MIGRATE_LIVE | PERSIST_DEST | UNDEFINE_SOURCE`` always; ``UNSAFE`` only when every disk is on
a storage domain declared shared (libvirt cannot tell that a POSIX directory is shared); ``AUTO_CONVERGE``
and ``POSTCOPY`` (post-copy allowed, switched to by ``start_post_copy``) from the cluster policy. The data
goes to ``settings.migrate_uri`` (the target Host's migrationAddress; ``tcp://127.0.0.1`` for lab hosts).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import anyio
import anyio.to_thread
import libvirt

from controller.adapters.libvirt.connection import HostConnection
from controller.adapters.libvirt.errors import ReconcileError, TransientError, classify
from controller.adapters.libvirt.observe import job_from_stats
from reconcilers.domain import HostName, ObservedJob
from reconcilers.migration.actions import AbortMigration, MigrateDomain, MigrationSettings, StartPostCopy
from reconcilers.migration.plan import InFlight

log = logging.getLogger("virtplane.migration")

Conn: TypeAlias = libvirt.virConnect


# ---------------------------------------------------------------- blocking libvirt calls


def migration_flags(settings: MigrationSettings) -> int:
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if settings.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    if settings.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if settings.post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if settings.peer_uri:
        flags |= libvirt.VIR_MIGRATE_PEER2PEER
    return int(flags)


def migration_params(settings: MigrationSettings) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if settings.migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = settings.migrate_uri
    if settings.bandwidth_mib_s:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = settings.bandwidth_mib_s
    return params


def migrate_blocking(source: Conn, target: Conn, name: str, settings: MigrationSettings) -> ObservedJob | None:
    """Migrate ``name`` live from ``source`` to ``target``; returns the completed job's stats (downtime...)
    as the target reports them. Blocks until the migration ends; raises ``libvirtError`` on failure."""
    dom = source.lookupByName(name)
    dom.migrateSetMaxDowntime(settings.max_downtime_ms, 0)
    if settings.peer_uri:
        dom.migrateToURI3(settings.peer_uri, migration_params(settings), migration_flags(settings))
    else:
        dom.migrate3(target, migration_params(settings), migration_flags(settings))
    try:
        moved = target.lookupByName(name)
        # KEEP_COMPLETED: fetching must not erase them (`virsh domjobinfo --completed` shows them too).
        keep = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
        return job_from_stats(moved.jobStats(keep))
    except libvirt.libvirtError as exc:
        log.info("%s: no completed job stats on the target: %s", name, exc)
        if _still_runs_on(source, name):
            # The call returned, but the target cannot be asked and the guest still runs here (the target
            # died during the migration): it did not move.
            raise NotMoved(f"the target stopped answering during the migration ({exc}); "
                           "the VM keeps running on the source") from exc
        return None


class NotMoved(Exception):
    """A migration call returned but the guest is still running on the source."""


def _still_runs_on(conn: Conn, name: str) -> bool:
    try:
        state, _ = conn.lookupByName(name).state()
    except libvirt.libvirtError:
        return False  # undefined on the source: it moved
    return bool(state == libvirt.VIR_DOMAIN_RUNNING)


def start_post_copy_blocking(conn: Conn, name: str) -> None:
    conn.lookupByName(name).migrateStartPostCopy(0)


def abort_blocking(conn: Conn, name: str) -> None:
    conn.lookupByName(name).abortJob()


def job_blocking(conn: Conn, name: str) -> ObservedJob | None:
    return job_from_stats(conn.lookupByName(name).jobStats(0))


# ---------------------------------------------------------------- migrations in flight


@dataclass
class MigrationJob:
    """One migration started by this controller. ``done`` and the outcome are set on the event loop."""

    vm: str
    source: HostName
    target: HostName
    settings: MigrationSettings
    migration: str | None  # the Migration object that asked for it
    reason: str
    started: float  # monotonic
    post_copy: bool = False
    aborting: bool = False
    last: ObservedJob | None = None  # latest job stats seen on the source
    done: bool = False
    error: str | None = None
    completed: ObservedJob | None = None  # final stats (downtime) from the target
    finished: float | None = None  # monotonic

    @property
    def ok(self) -> bool:
        return self.done and self.error is None

    def elapsed(self, now: float) -> float:
        return (self.finished if self.finished is not None else now) - self.started


@dataclass
class Migrations:
    """Every migration this controller runs, by VM; source and target count against maxConcurrentPerHost
    from the moment the migration is started until its outcome was collected."""

    clock: Callable[[], float] = time.monotonic
    on_finish: Callable[[MigrationJob], None] | None = None
    jobs: dict[str, MigrationJob] = field(default_factory=dict)
    results: dict[str, MigrationJob] = field(default_factory=dict)  # by Migration name, once collected
    failures: dict[str, tuple[float, str]] = field(default_factory=dict)  # by VM: (when, why), for backoff
    waiting: dict[str, str] = field(default_factory=dict)  # Migration name -> why it has not started yet

    def busy(self) -> dict[HostName, int]:
        count: Counter[HostName] = Counter()
        for job in self.jobs.values():
            if not job.done:
                count[job.source] += 1
                count[job.target] += 1
        return dict(count)

    def in_flight(self, vm: str) -> InFlight | None:
        job = self.jobs.get(vm)
        if job is None:
            return None
        return InFlight(job.source, job.target, job.elapsed(self.clock()), job.migration, job.post_copy,
                        job.aborting)

    def by_migration(self, name: str) -> MigrationJob | None:
        return next((j for j in self.jobs.values() if j.migration == name), None)

    def retry_blocked(self, vm: str, backoff_s: float) -> str | None:
        failure = self.failures.get(vm)
        if failure is None or self.clock() - failure[0] >= backoff_s:
            return None
        return f"the last attempt failed {self.clock() - failure[0]:.0f} s ago ({failure[1]})"

    async def start(self, action: MigrateDomain, hosts: Mapping[HostName, HostConnection]) -> MigrationJob:
        """Start the migration in its own thread and return: the job is observed, not awaited."""
        if action.domain in self.jobs:
            raise TransientError(f"{action.domain} is already migrating", retry_after=1.0)
        job = MigrationJob(str(action.domain), action.host, action.target_host, action.settings,
                           action.migration, action.reason, self.clock())
        self.jobs[job.vm] = job  # counted from now: no await between the planner's check and this
        # The migration holds its connections until it ends, outside the hosts' limiters: it gets its own
        # (a connection is used by one thread at a time), so progress and an abort are not held behind it.
        opened: list[tuple[HostConnection, Conn]] = []
        try:
            for host in (_host(hosts, action.target_host), _host(hosts, action.host)):
                opened.append((host, await host.open_private("migrate_connect")))
        except ReconcileError:
            del self.jobs[job.vm]
            for host, conn in opened:
                await anyio.to_thread.run_sync(host.close_private, conn)
            raise
        (_, target), (_, source) = opened
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                self._run(job, source, target, loop)
            finally:
                for host, conn in opened:
                    host.close_private(conn)

        thread = threading.Thread(target=run, name=f"migrate-{job.vm}", daemon=True)
        thread.start()
        log.info("migration of %s started: %s -> %s (%s)", job.vm, job.source, job.target, job.reason)
        return job

    def _run(self, job: MigrationJob, source: Conn, target: Conn, loop: asyncio.AbstractEventLoop) -> None:
        completed: ObservedJob | None = None
        error: str | None = None
        try:
            completed = migrate_blocking(source, target, job.vm, job.settings)
        except libvirt.libvirtError as exc:
            error = classify(exc, host=job.source, op="migrate").message
        except NotMoved as exc:
            error = str(exc)
        except Exception as exc:  # reported as the migration's failure, never swallowed
            log.exception("migration of %s crashed", job.vm)
            error = f"{type(exc).__name__}: {exc}"
        try:
            loop.call_soon_threadsafe(self._finish, job, completed, error)
        except RuntimeError:  # the loop is closed: the controller is gone
            log.warning("migration of %s ended after the controller stopped (%s)", job.vm, error or "ok")

    def _finish(self, job: MigrationJob, completed: ObservedJob | None, error: str | None) -> None:
        job.done, job.completed, job.error, job.finished = True, completed, error, self.clock()
        log.info("migration of %s %s after %.2f s%s", job.vm, "failed" if error else "completed",
                 job.elapsed(self.clock()), f": {error}" if error else "")
        if self.on_finish is not None:
            self.on_finish(job)

    def collect(self, vm: str) -> MigrationJob | None:
        """Take a finished job out of flight (once): its hosts are free again, its result is kept."""
        job = self.jobs.get(vm)
        if job is None or not job.done:
            return None
        del self.jobs[vm]
        if job.migration is not None:
            self.results[job.migration] = job
            self.waiting.pop(job.migration, None)
        if job.error is not None:
            self.failures[vm] = (job.finished or self.clock(), job.error)
        else:
            self.failures.pop(vm, None)
        return job

    async def start_post_copy(self, action: StartPostCopy, hosts: Mapping[HostName, HostConnection]) -> None:
        job = self.jobs.get(action.domain)
        asked = self.clock()
        await _host(hosts, action.host).run(
            "migrateStartPostCopy", lambda conn: start_post_copy_blocking(conn, action.domain))
        self._fallback_log("post-copy", action.domain, job, asked)
        if job is not None:
            job.post_copy = True

    async def abort(self, action: AbortMigration, hosts: Mapping[HostName, HostConnection]) -> None:
        job = self.jobs.get(action.domain)
        asked = self.clock()
        await _host(hosts, action.host).run("abortJob", lambda conn: abort_blocking(conn, action.domain))
        self._fallback_log("abort", action.domain, job, asked)
        if job is not None:
            job.aborting = True
            job.reason = action.reason

    def _fallback_log(self, what: str, vm: str, job: MigrationJob | None, asked: float) -> None:
        at = f" at {asked - job.started:.1f} s into the migration" if job is not None else ""
        log.info("migration of %s: %s requested%s (the call took %.2f s)", vm, what, at, self.clock() - asked)


def _host(hosts: Mapping[HostName, HostConnection], name: HostName) -> HostConnection:
    conn = hosts.get(name)
    if conn is None:
        raise TransientError(f"no connection to host {name}", retry_after=1.0, host=name, op="migrate")
    return conn

