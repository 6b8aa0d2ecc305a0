"""One libvirt connection per host: lazy open, worker threads, keepalive, reconnect, call counters, events.

Every blocking libvirt call runs in a worker thread through ``anyio.to_thread.run_sync(...,
limiter=<per-host CapacityLimiter>)``, so one slow host cannot eat the thread pool and no host gets more than
``capacity`` calls in flight. Every ``libvirtError`` goes through :func:`controller.adapters.libvirt.errors.classify`.

Test driver: ``test:///path/node.xml`` keeps its state *in the connection object* — opening the same file
twice gives two unrelated hosts — while ``test:///default`` is one process-wide shared state (refcounted:
it resets when its last connection closes). So a HostConnection opens a test URI once and never reopens
it; keep one HostConnection per host for the life of the process, and give each simulated host its own
node file.
:meth:`HostConnection.for_test_host` writes a node file giving a simulated host its CPUs and memory.

Connection loss (RPC errors, keepalive timeout, close callback) marks the connection broken; the next call
reopens it, with exponential backoff between failed attempts (``ConnectionLost.retry_after`` tells callers
when to come back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import anyio
import anyio.to_thread
import libvirt

from controller.adapters.libvirt import codec, resources
from controller.adapters.libvirt.errors import ConflictError, ConnectionLost, ReconcileError, classify, redacted
from controller.adapters.libvirt.eventloop import ensure_event_loop
from controller.adapters.libvirt.observe import (
    DomainEvent,
    DomainListing,
    DomainSummary,
    FetchPredicate,
    job_from_stats,
    lifecycle_event,
    observe_domain_blocking,
    reason_name,
    state_name,
    version_string,
)
from reconcilers.domain import (
    DomainConfig,
    DomainName,
    HostName,
    NetfsPoolConfig,
    NetworkConfig,
    NetworkName,
    ObservedDomain,
    ObservedHost,
    ObservedJob,
    ObservedNetwork,
    ObservedPool,
    ObservedVolume,
    OwnerMetadata,
    PoolConfig,
    PoolName,
    VolumeConfig,
    VolumeName,
)

log = logging.getLogger("virtplane.libvirt")

T = TypeVar("T")
EventCallback = Callable[[DomainEvent], None]
Conn: TypeAlias = libvirt.virConnect


def _affect(live: bool, config: bool) -> int:
    if not (live or config):
        raise ValueError("at least one of live / config must be set")
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0
    return flags | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0)


def _affect_each(live: bool, config: bool) -> list[int]:
    """One call per target: the test driver refuses LIVE|CONFIG together for memory and vCPUs."""
    _affect(live, config)
    targets = ((libvirt.VIR_DOMAIN_AFFECT_LIVE, live), (libvirt.VIR_DOMAIN_AFFECT_CONFIG, config))
    return [flag for flag, wanted in targets if wanted]


def _set_vcpus(dom: libvirt.virDomain, *, vcpus: int, flags: int) -> None:
    dom.setVcpusFlags(vcpus, flags)


def _set_memory(dom: libvirt.virDomain, *, memory_kib: int, flags: int) -> None:
    dom.setMemoryFlags(memory_kib, flags)


def _code(exc: libvirt.libvirtError) -> int:
    return int(exc.get_error_code())


def _transient_names(conn: Conn) -> frozenset[str]:
    """Names of the host's transient domains (usually none). A name is unique among a host's domains, so
    a listing tells persistent from transient by name: no per-domain ``UUIDString`` call (at 100 domains a
    host, that call was a third of the controller's idle CPU)."""
    return frozenset(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT))


class _Lane:
    """One libvirt connection of a host and the epoch (``HostConnection.generation``) it was opened in."""

    __slots__ = ("conn", "epoch", "event_ids")

    def __init__(self, conn: Conn, epoch: int) -> None:
        self.conn = conn
        self.epoch = epoch
        self.event_ids: list[int] = []


class HostConnection:
    """A host's libvirt connections, each used by one call at a time.

    libvirt's RPC client lets several threads call through one connection ("passing the buck"), but libvirt
    9.0's client does not survive a keepalive timeout while several threads wait on a hung daemon: the
    client is freed under the waiting threads, and when the daemon finally dies (fencing kills it) the process
    crashes in whatever call was waiting. ``tests/lab/test_hung_host_connection.py`` reproduced
    it (SIGSTOP the lab's libvirtd under six callers, kill it after the keepalive timeout) in every trial
    with a shared connection, and in none with a connection per caller. So a remote host gets a small pool:
    every call checks out a connection of its own (opened lazily, at most ``capacity`` in use, as many as the
    limiter lets in), and domain events have a connection of their own that makes no calls. A connection
    is closed only by the thread that holds it, or while nobody does — never under a call.

    The test driver keeps its state in its one connection and has no RPC client: it is shared, as before.
    """

    def __init__(
        self,
        name: HostName | str,
        uri: str,
        *,
        capacity: int = 4,
        keepalive: tuple[int, int] = (5, 3),
        reconnect_base: float = 0.5,
        reconnect_cap: float = 30.0,
    ) -> None:
        self.name = HostName(name)
        self.uri = uri
        self.capacity = capacity
        self._keepalive = keepalive
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._broken = False
        self._opened = False
        self._failures = 0
        self._next_attempt = 0.0
        self._open_lock = threading.Lock()  # one (re)open at a time
        self._pool_lock = threading.Lock()  # guards _idle
        self._idle: list[_Lane] = []  # remote: connections open and not in use
        self._shared: _Lane | None = None  # test driver: its one connection
        self._events: _Lane | None = None  # remote: the connection domain events arrive on
        self._count_lock = threading.Lock()  # guards the call counters and the subscriber list
        self._calls: Counter[str] = Counter()
        self._limiter: anyio.CapacityLimiter | None = None
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, EventCallback]] = []
        self._jobs_supported = True
        self._on_lost: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None
        self.generation = 0  # bumped on every (re)open: events may have been missed in between
        self._identity: tuple[int, str | None, str, str, str] | None = None  # (generation, uuid, names...)

    @classmethod
    def for_test_host(
        cls, name: str, directory: Path, *, cpus: int, memory_kib: int, capacity: int = 4
    ) -> HostConnection:
        """A simulated host on libvirt's test driver with the given capacity (node file in ``directory``)."""
        path = directory / f"{name}.xml"
        path.write_text(codec.render_test_host(cpus=cpus, memory_kib=memory_kib))
        return cls(name, f"test://{path.resolve()}", capacity=capacity)

    @property
    def is_test(self) -> bool:
        return self.uri.startswith("test://")

    @property
    def calls(self) -> Counter[str]:
        """libvirt API calls made so far, by API name (a copy)."""
        with self._count_lock:
            return Counter(self._calls)

    def _count(self, op: str, n: int = 1) -> None:
        with self._count_lock:
            self._calls[op] += n

    # ================================================================ connection management

    async def open(self) -> None:
        """Connect now (the first call would otherwise); raises ConnectionLost when the host does not answer."""
        await self._run("open", lambda conn: None)

    async def close(self) -> None:
        """Close what is not in use; a connection in use is closed by its call when it returns. The next
        call opens afresh (for the test driver: a new, empty host unless it has a node file)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
            lanes = [*idle, *(lane for lane in (self._events, self._shared) if lane is not None)]
            self._events = self._shared = None
            self._broken = self._opened
        if lanes:
            await anyio.to_thread.run_sync(self._close_all, lanes, limiter=self._get_limiter())

    async def __aenter__(self) -> HostConnection:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _get_limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.capacity)
        return self._limiter

    def _checkout(self) -> _Lane:
        """A connection for this thread's call alone (the test driver's shared one); runs in a worker thread."""
        if self.is_test:
            return self._shared or self._open_shared()
        with self._pool_lock:
            if self._idle and not self._broken:
                return self._idle.pop()
        with self._open_lock:
            if self._broken or not self._opened:
                return self._renew()
            with self._pool_lock:
                if self._idle:  # one came back while this thread waited for the lock
                    return self._idle.pop()
            return self._open_lane(self.generation)

    def _checkin(self, lane: _Lane) -> None:
        if self.is_test:
            return
        with self._pool_lock:
            if not self._broken and lane.epoch == self.generation:
                self._idle.append(lane)
                return
        self._close_lane(lane)  # of a lost or closed epoch: this thread holds it, nobody else can be in it

    def _open_shared(self) -> _Lane:
        with self._open_lock:
            if self._shared is None:
                lane = self._open_lane(self.generation + 1)
                if self._subscribers:
                    self._register_events(lane)
                self._shared, self._opened = lane, True
                self.generation += 1
            return self._shared

    def _renew(self) -> _Lane:
        """After a loss (or at first): open the event connection (when anyone listens) and a connection for
        the caller, then retire every idle connection of the previous epoch. Holds ``_open_lock``."""
        epoch = self.generation + 1
        events = self._open_events(epoch) if self._subscribers else None
        try:
            lane = self._open_lane(epoch)
        except BaseException:
            if events is not None:
                self._close_lane(events)
            raise
        with self._pool_lock:
            stale, self._idle = self._idle, []
            old_events, self._events = self._events, events
            self.generation, self._broken, self._opened = epoch, False, True
        self._close_all([*stale, *([old_events] if old_events is not None else [])])
        return lane

    def _open_events(self, epoch: int) -> _Lane:
        """A connection that domain events arrive on (it makes no calls)."""
        lane = self._open_lane(epoch)
        try:
            self._register_events(lane)
        except BaseException:
            self._close_lane(lane)
            raise
        return lane

    def _open_lane(self, epoch: int) -> _Lane:
        now = time.monotonic()
        if now < self._next_attempt:
            raise ConnectionLost(
                f"reconnect after {self._failures} failure(s) in {self._next_attempt - now:.1f}s",
                retry_after=self._next_attempt - now, host=self.name, op="open",
            )  # fmt: skip
        ensure_event_loop()
        self._count("open")
        try:
            conn = libvirt.open(self.uri)
            if not self.is_test:
                conn.setKeepAlive(*self._keepalive)
                conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError as exc:
            self._failures += 1
            delay = min(self._reconnect_cap, self._reconnect_base * 2 ** (self._failures - 1))
            self._next_attempt = now + delay
            log.warning("host %s: cannot open %s: %s", self.name, self.uri, exc)
            raise ConnectionLost(redacted(exc), retry_after=delay, host=self.name, op="open") from exc
        self._failures, self._next_attempt = 0, 0.0
        return _Lane(conn, epoch)

    def _close_all(self, lanes: list[_Lane]) -> None:
        for lane in lanes:
            self._close_lane(lane)

    def _close_lane(self, lane: _Lane) -> None:
        conn = lane.conn
        for callback_id in lane.event_ids:
            try:
                conn.domainEventDeregisterAny(callback_id)
            except libvirt.libvirtError:
                break  # the connection is gone; its callbacks with it
        lane.event_ids = []
        if not self.is_test:
            with contextlib.suppress(libvirt.libvirtError):  # already called back (lost): nothing to remove
                conn.unregisterCloseCallback()
        try:
            conn.close()
        except libvirt.libvirtError as exc:
            # Closing a connection whose host is gone (powered off, lab down) fails in several ways
            # ("client socket is closed"); the connection is released either way.
            log.info("host %s: closing a dead connection: %s", self.name, exc)

    def _on_close(self, _conn: Conn, reason: int, _opaque: object) -> None:
        if reason != libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
            self._broken = True
            if self._on_lost is not None:
                loop, callback = self._on_lost
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                    loop.call_soon_threadsafe(callback)

    def notify_on_loss(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the current event loop) when libvirt reports a connection lost: EOF, a
        keepalive timeout, an error. A dead host is noticed at once instead of at the next observation."""
        self._on_lost = (asyncio.get_running_loop(), callback)

    async def run(self, op: str, fn: Callable[[Conn], T]) -> T:
        """Run ``fn(conn)`` in a worker thread under this host's limiter, counting ``op`` and classifying
        libvirt errors: the seam for operations kept in their own modules (migration, snapshots). ``conn``
        is this call's alone: do not keep it past ``fn``."""
        self._count(op)
        return await self._run(op, fn)

    async def open_private(self, op: str) -> Conn:
        """A connection of the caller's own, for one long call (a peer-to-peer migration) made outside the
        limiter: on a pooled one it would hold a place for minutes. The caller closes it
        (:meth:`close_private`). The test driver keeps its state in its one connection: it gets that one."""
        if self.is_test:
            return await self.run(op, lambda conn: conn)
        self._count(op)

        def open_blocking() -> Conn:
            ensure_event_loop()
            try:
                conn = libvirt.open(self.uri)
                conn.setKeepAlive(*self._keepalive)  # a host that dies mid-call is noticed
                return conn
            except libvirt.libvirtError as exc:
                raise classify(exc, host=self.name, op=op) from exc

        return await anyio.to_thread.run_sync(open_blocking, limiter=self._get_limiter())

    def close_private(self, conn: Conn) -> None:
        """Close a connection from :meth:`open_private` (blocking; any thread)."""
        if self.is_test:
            return
        try:
            conn.close()
        except libvirt.libvirtError as exc:
            log.info("host %s: closing a private connection: %s", self.name, exc)

    async def _run(self, op: str, fn: Callable[[Conn], T], *, abandon: bool = False) -> T:
        """``abandon`` (read-only calls only): a caller's timeout returns at once and leaves the stuck thread,
        which keeps its connection until the call returns."""
        try:
            return await anyio.to_thread.run_sync(self._call_blocking, fn, limiter=self._get_limiter(),
                                                  abandon_on_cancel=abandon)
        except libvirt.libvirtError as exc:
            raise classify(exc, host=self.name, op=op) from exc

    def _call_blocking(self, fn: Callable[[Conn], T]) -> T:
        lane = self._checkout()
        try:
            return fn(lane.conn)
        except libvirt.libvirtError as exc:
            if not self.is_test and isinstance(classify(exc), ConnectionLost):
                self._broken = True  # this one is closed on its way back; the next call opens anew
            raise
        finally:
            self._checkin(lane)

    def _domain(self, conn: Conn, name: str) -> libvirt.virDomain:
        self._count("lookupByName")
        return conn.lookupByName(name)

    # ================================================================ observation

    async def observe_host(self, timeout: float | None = None) -> ObservedHost:
        """Capacity and versions; never raises for an unreachable host (ready=False, error=...). ``timeout``:
        a host that does not answer within it (a hung libvirtd) counts as not answering."""
        try:
            with anyio.fail_after(timeout):
                return await self._run("observe_host", self._observe_host_blocking, abandon=True)
        except ReconcileError as exc:
            return ObservedHost(name=self.name, uri=self.uri, ready=False, error=str(exc))
        except TimeoutError:
            self._broken = True  # the stuck call keeps its thread; the next call opens a new connection
            return ObservedHost(name=self.name, uri=self.uri, ready=False, error=f"no answer within {timeout:g} s")

    def _observe_host_blocking(self, conn: Conn) -> ObservedHost:
        self._count("getInfo")
        info = conn.getInfo()
        self._count("getFreeMemory")
        free = conn.getFreeMemory()
        # A custom test-driver node file has no NUMA cells, so libvirt reports 0 free: unknown, not full.
        # (Nothing plans with free memory — allocations come from placed VMs — so it is not simulated by
        # asking every domain, which would be per-domain polling at every heartbeat.)
        free_bytes = None if self.is_test and free == 0 else int(free)
        if self._identity is None or self._identity[0] != self.generation:
            # What does not change while connected: asked once per connection.
            self._count("getCapabilities")
            host_uuid = codec.parse_host_uuid(conn.getCapabilities())
            self._count("getHostname")
            hostname = conn.getHostname()
            self._count("getLibVersion")
            lib_version = version_string(conn.getLibVersion())
            self._count("getVersion")
            hv_version = version_string(conn.getVersion())
            self._identity = (self.generation, host_uuid, hostname, lib_version, hv_version)
        _generation, host_uuid, hostname, lib_version, hv_version = self._identity
        return ObservedHost(
            name=self.name,
            uri=self.uri,
            ready=True,
            hostname=hostname,
            libvirt_version=lib_version,
            hypervisor_version=hv_version,
            cpus=int(info[2]),
            memory_bytes=int(info[1]) * 1024 * 1024,
            free_memory_bytes=free_bytes,
            host_uuid=host_uuid,
        )

    async def list_domains(self) -> list[ObservedDomain]:
        """Every domain on the host, in one worker-thread pass: the state of all domains in one call, then
        the inactive and live XML of each (parsing is cached by XML text: an unchanged domain costs no parse).
        """
        return await self._run("list_domains", self._list_blocking)

    def _list_blocking(self, conn: Conn) -> list[ObservedDomain]:
        self._count("getAllDomainStats")
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
        self._count("listAllDomains")
        transient = _transient_names(conn)
        out = []
        for dom, values in stats:
            try:
                persistent = not transient or dom.name() not in transient
                state, reason = values["state.state"], values["state.reason"]
                observed = observe_domain_blocking(
                    self.name, dom, state, reason, persistent, self._count, self._job
                )
                out.append(observed)
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:  # undefined since the listing: skip it
                    raise
        return out

    async def list_domain_states(self, fetch: FetchPredicate) -> DomainListing:
        """Every domain's state in two calls (``getAllDomainStats`` of the state group, the transient ones);
        the XML of only those for which ``fetch(name, state, reason, persistent)`` says so. ``fetch`` runs in
        the worker thread: give it a snapshot, not live structures."""
        return await self._run("list_domain_states", partial(self._list_states_blocking, fetch=fetch))

    def _list_states_blocking(self, conn: Conn, fetch: FetchPredicate) -> DomainListing:
        self._count("getAllDomainStats")
        stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
        self._count("listAllDomains")
        transient = _transient_names(conn)
        states: dict[DomainName, DomainSummary] = {}
        observed: dict[DomainName, ObservedDomain] = {}
        for dom, values in stats:
            name = DomainName(dom.name())
            st = state_name(values["state.state"])
            summary = DomainSummary(st, reason_name(st, values["state.reason"]), name not in transient)
            states[name] = summary
            if not fetch(name, summary):
                continue
            try:
                observed[name] = observe_domain_blocking(
                    self.name, dom, values["state.state"], values["state.reason"], summary.persistent,
                    self._count, self._job,
                )  # fmt: skip
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:  # undefined since the listing: skip it
                    raise
                states.pop(name)
        return DomainListing(states, observed)

    async def observe_domain(self, name: DomainName | str) -> ObservedDomain | None:
        return await self._run("observe_domain", lambda conn: self._observe_one_blocking(conn, name))

    def _observe_one_blocking(self, conn: Conn, name: str) -> ObservedDomain | None:
        try:
            dom = self._domain(conn, name)
            self._count("state")
            state, reason = dom.state()
            self._count("isPersistent")
            persistent = bool(dom.isPersistent())
            return observe_domain_blocking(self.name, dom, state, reason, persistent, self._count, self._job)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _job(self, dom: libvirt.virDomain) -> ObservedJob | None:
        if not self._jobs_supported:
            return None
        try:
            self._count("jobStats")
            return job_from_stats(dom.jobStats(0))
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_SUPPORT:  # the test driver has no jobs
                self._jobs_supported = False
                return None
            if _code(exc) == libvirt.VIR_ERR_OPERATION_UNSUPPORTED:
                # The target of an incoming migration: "statistics are available only on the source host".
                return None
            raise

    # ================================================================ domain lifecycle

    async def define_domain(self, config: DomainConfig) -> DomainConfig:
        """Define (or redefine) the persistent domain; returns it as libvirt stored it (with the UUID and
        MACs libvirt filled in — keep those in status)."""
        xml = codec.render_domain(config)

        def define(conn: Conn) -> str:
            self._count("defineXML")
            dom = conn.defineXML(xml)
            self._count("XMLDesc")
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

        return codec.parse_domain(await self._run("define", define))[0]

    async def domain_xml(self, name: DomainName | str) -> str:
        """The persistent definition as libvirt holds it (with secrets such as a VNC password)."""

        def read(conn: Conn) -> str:
            dom = self._domain(conn, name)
            self._count("XMLDesc")
            return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))

        return await self._run("XMLDesc", read)

    async def block_capacities(self, name: DomainName | str, disks: dict[str, str]) -> dict[str, int]:
        """Virtual size in bytes of the domain's disks ({target: path}): from the storage volume at that path
        when a pool holds it, else from the domain (``virDomainGetBlockInfo``)."""

        def read(conn: Conn) -> dict[str, int]:
            dom = self._domain(conn, name)
            sizes = {}
            for target, path in disks.items():
                try:
                    self._count("storageVolLookupByPath")
                    sizes[target] = int(conn.storageVolLookupByPath(path).info()[1])
                    continue
                except libvirt.libvirtError as exc:
                    if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                        raise
                self._count("blockInfo")
                sizes[target] = int(dom.blockInfo(target)[0])
            return sizes

        return await self._run("blockInfo", read)

    async def stamp_owner(self, name: DomainName | str, owner: OwnerMetadata, *, live: bool) -> None:
        """Write our owner stamp into the domain's metadata, in the persistent definition and (``live``) the
        running one, without redefining or restarting it (``virDomainSetMetadata``)."""
        xml = codec.render_owner(owner)
        flags = _affect(live, True)

        def stamp(dom: libvirt.virDomain) -> None:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, codec.METADATA_PREFIX, codec.METADATA_NS, flags)

        await self._domain_call("setMetadata", name, stamp)

    async def start_domain(self, name: DomainName | str) -> DomainConfig | None:
        """Start the domain; returns its live definition as QEMU runs it (None if it cannot be parsed)."""

        def start(conn: Conn) -> str:
            dom = self._domain(conn, name)
            self._count("start")
            dom.create()
            self._count("XMLDesc")
            return str(dom.XMLDesc(0))

        xml = await self._run("start", start)
        try:
            return codec.parse_domain(xml)[0]
        except codec.CodecError:
            return None

    async def shutdown_domain(self, name: DomainName | str) -> None:
        """Ask the guest to power off (ACPI); observe the state later, don't wait here."""
        await self._domain_call("shutdown", name, lambda d: d.shutdown())

    async def destroy_domain(self, name: DomainName | str) -> None:
        await self._domain_call("destroy", name, lambda d: d.destroy())

    async def undefine_domain(
        self, name: DomainName | str, *, keep_snapshots_metadata: bool = False, keep_nvram: bool = False
    ) -> None:
        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        if not keep_snapshots_metadata:
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        if not self.is_test:  # the test driver rejects the NVRAM and checkpoint flags ("unsupported flags")
            flags |= (
                libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM if keep_nvram else libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
            )
            if not keep_snapshots_metadata:
                flags |= libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        await self._domain_call("undefine", name, lambda d: d.undefineFlags(flags))

    async def attach_device(self, name: DomainName | str, xml: str, *, live: bool, config: bool) -> None:
        flags = _affect(live, config)
        await self._domain_call("attachDevice", name, lambda d: d.attachDeviceFlags(xml, flags))

    async def detach_device(self, name: DomainName | str, xml: str, *, live: bool, config: bool) -> None:
        """Request the detach; a live unplug completes when the guest agrees (a "device-removed" event)."""
        flags = _affect(live, config)
        await self._domain_call("detachDevice", name, lambda d: d.detachDeviceFlags(xml, flags))

    async def set_vcpus(self, name: DomainName | str, vcpus: int, *, live: bool, config: bool) -> None:
        for flags in _affect_each(live, config):
            await self._domain_call("setVcpus", name, partial(_set_vcpus, vcpus=vcpus, flags=flags))

    async def set_memory(self, name: DomainName | str, memory_kib: int, *, live: bool, config: bool) -> None:
        for flags in _affect_each(live, config):
            set_memory = partial(_set_memory, memory_kib=memory_kib, flags=flags)
            await self._domain_call("setMemory", name, set_memory)

    async def block_resize(self, name: DomainName | str, target: str, capacity_bytes: int) -> None:
        """Grow a disk of a running domain (QEMU resizes the image and the guest sees the new size)."""
        flags = libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
        await self._domain_call("blockResize", name, lambda d: d.blockResize(target, capacity_bytes, flags))

    async def _domain_call(self, op: str, name: str, fn: Callable[[libvirt.virDomain], Any]) -> None:
        def call(conn: Conn) -> None:
            dom = self._domain(conn, name)
            self._count(op)
            fn(dom)

        await self._run(op, call)

    # ================================================================ storage and networks

    async def ensure_pool(self, pool: PoolConfig) -> ObservedPool:
        """Define, build, start (mount) and autostart a pool if needed; an active same-named pool with other
        settings conflicts (it is not unmounted under running guests)."""
        xml, active = await self._run(
            "ensure_pool", partial(resources.ensure_pool_blocking, pool=pool, count=self._count)
        )
        observed = codec.parse_pool_state(xml, active)
        if observed.config != pool:
            raise ConflictError(
                f"pool {pool.name} is active with other settings ({_pool_text(observed.config)}), not "
                f"{_pool_text(pool)}; stop its guests and `virsh pool-destroy {pool.name}` to change it",
                host=self.name,
                op="ensure_pool",
            )
        return observed

    async def observe_pool(self, name: PoolName | str) -> ObservedPool | None:
        """The pool with capacity and free space (refreshed), or None when it is not defined."""
        found = await self._run("observe_pool", partial(resources.observe_pool_blocking, name=name, count=self._count))
        return codec.parse_pool_state(*found) if found is not None else None

    async def create_volume(self, pool: PoolName | str, volume: VolumeConfig) -> ObservedVolume:
        """Create the volume unless one of that name exists; returns it as observed."""
        create = partial(resources.create_volume_blocking, pool=pool, volume=volume, count=self._count)
        return codec.parse_volume(await self._run("create_volume", create))

    async def delete_volume(self, pool: PoolName | str, name: VolumeName | str) -> bool:
        """Delete a volume; False if it was already gone."""
        delete = partial(resources.delete_volume_blocking, pool=pool, name=name, count=self._count)
        return await self._run("delete_volume", delete)

    async def copy_volume(
        self, pool: PoolName | str, volume: VolumeConfig, source_path: str, source_format: str | None = None
    ) -> ObservedVolume:
        """Create ``volume`` as a full copy (format conversion by libvirt) of the pool volume at
        ``source_path``, unless it exists. A source outside every pool raises NotFound."""
        copy = partial(
            resources.copy_volume_blocking,
            pool=pool, volume=volume, source_path=source_path, source_format=source_format, count=self._count,
        )  # fmt: skip
        return codec.parse_volume(await self._run("copy_volume", copy))

    async def resize_volume(
        self, pool: PoolName | str, name: VolumeName | str, capacity_bytes: int
    ) -> ObservedVolume:
        """Grow a volume (shrinking is refused by libvirt: SpecInvalid)."""
        resize = partial(
            resources.resize_volume_blocking,
            pool=pool,
            name=name,
            capacity_bytes=capacity_bytes,
            count=self._count,
        )
        return codec.parse_volume(await self._run("resize_volume", resize))

    async def list_volumes(self, pool: PoolName | str) -> list[ObservedVolume]:
        list_all = partial(resources.list_volumes_blocking, pool=pool, count=self._count)
        return [codec.parse_volume(xml) for xml in await self._run("list_volumes", list_all)]

    async def ensure_iscsi_secret(self, usage: str, description: str, value: bytes) -> str:
        """The private iSCSI secret ``usage`` defined here with ``value``; returns its UUID."""
        ensure = partial(resources.ensure_iscsi_secret_blocking, usage=usage, description=description, value=value,
                         count=self._count)
        return await self._run("ensure_secret", ensure)

    async def ensure_network(self, network: NetworkConfig) -> ObservedNetwork:
        """Define, start and autostart a network if needed; returns it as observed (compare configs there)."""
        ensure = partial(resources.ensure_network_blocking, network=network, count=self._count)
        xml, uuid, active, persistent, autostart = await self._run("ensure_network", ensure)
        config = codec.parse_network(xml)
        return ObservedNetwork(NetworkName(network.name), uuid, active, persistent, autostart, config)

    async def delete_network(self, name: NetworkName | str) -> bool:
        """Stop and undefine a network; False if it was already gone."""
        delete = partial(resources.delete_network_blocking, name=name, count=self._count)
        return await self._run("delete_network", delete)

    # ================================================================ events

    async def watch_events(self, callback: EventCallback) -> None:
        """Deliver this host's domain lifecycle and device-removed events to ``callback``, called on the
        current (asyncio) event loop. Subscriptions survive reconnects."""
        with self._count_lock:
            self._subscribers.append((asyncio.get_running_loop(), callback))
        try:
            await anyio.to_thread.run_sync(self._ensure_events, limiter=self._get_limiter())
        except libvirt.libvirtError as exc:
            raise classify(exc, host=self.name, op="domainEventRegisterAny") from exc

    def _ensure_events(self) -> None:
        if self.is_test:
            lane = self._shared or self._open_shared()  # a fresh one registers as it opens
            with self._open_lock:
                if not lane.event_ids:
                    self._register_events(lane)
            return
        with self._open_lock:
            if self._broken or not self._opened:
                self._checkin(self._renew())  # opens the event connection too
            elif self._events is None:
                self._events = self._open_events(self.generation)

    def _register_events(self, lane: _Lane) -> None:
        self._count("domainEventRegisterAny", 2)
        lifecycle, removed = libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED
        lane.event_ids = [
            lane.conn.domainEventRegisterAny(None, lifecycle, self._on_lifecycle, None),
            lane.conn.domainEventRegisterAny(None, removed, self._on_removed, None),
        ]

    def _on_lifecycle(self, _c: Conn, dom: libvirt.virDomain, event: int, detail: int, _o: object) -> None:
        self._deliver(lifecycle_event(self.name, dom.name(), event, detail))

    def _on_removed(self, _c: Conn, dom: libvirt.virDomain, alias: str, _o: object) -> None:
        self._deliver(DomainEvent(self.name, DomainName(dom.name()), "device-removed", alias))

    def _deliver(self, event: DomainEvent) -> None:
        # Runs on libvirt's event thread: hand over to each subscriber's loop, drop closed loops.
        with self._count_lock:
            subscribers = list(self._subscribers)
        for loop, callback in subscribers:
            try:
                loop.call_soon_threadsafe(callback, event)
            except RuntimeError:  # that loop is closed: forget the subscriber
                with self._count_lock:
                    self._subscribers.remove((loop, callback))


def _pool_text(pool: PoolConfig) -> str:
    if isinstance(pool, NetfsPoolConfig):
        return f"{pool.format} {pool.source_host}:{pool.source_dir} at {pool.path}"
    return f"dir {pool.path}"
