"""Thin asyncio wrapper over etcd's gRPC API (aetcd's generated stubs and messages).

The one place where gRPC / aetcd errors are classified into the store's error tree. We talk to the
stubs directly instead of through ``aetcd.Client`` because the store needs request features the
client does not expose (limits, pinned revisions, sorted pagination, prebuilt transactions) and a
watch stream it controls itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd.exceptions
import grpc
from aetcd import rpc

from controller.store.errors import RevisionCompacted, StoreError, StoreUnavailable

T = TypeVar("T")

_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}

READ_RETRY_S = 5.0  # a read waits this long for a raft election or a member's failover before failing

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
)


def prefix_end(prefix: bytes) -> bytes:
    """The etcd range end that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for an ``https://`` etcd: the CA that signed its certificate, and our client certificate
    and key (etcd ``--client-cert-auth``); cert and key may be None when etcd does not ask for them."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def endpoint_scheme(endpoints: Sequence[str]) -> str:
    """``http``, ``https`` or ``unix`` — one for all endpoints (ValueError if mixed or unknown)."""
    schemes = {urlsplit(e).scheme if "://" in e else "http" for e in endpoints}
    if len(schemes) != 1 or not schemes <= {"http", "https", "unix"}:
        raise ValueError(f"etcd endpoints must all be http://, all https:// or one unix://, got {list(endpoints)}")
    return schemes.pop()


def grpc_target(endpoints: Sequence[str]) -> str:
    """``["http://127.0.0.1:2379", ...]`` → a gRPC target (several IPs → one channel over all);
    ``unix:///run/etcd/sock`` → ``unix:/run/etcd/sock``."""
    if not endpoints:
        raise ValueError("no etcd endpoint given")
    if endpoint_scheme(endpoints) == "unix":
        if len(endpoints) != 1:
            raise ValueError("one unix:// etcd endpoint only")
        path = endpoints[0][len("unix://"):]
        if not path.startswith("/"):
            raise ValueError(f"etcd endpoint {endpoints[0]!r}: expected unix:///absolute/path")
        return f"unix:{path}"
    hosts: list[tuple[str, int]] = []
    for endpoint in endpoints:
        url = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        hosts.append((url.hostname or "127.0.0.1", url.port or 2379))
    if len(hosts) == 1:
        return f"{hosts[0][0]}:{hosts[0][1]}"
    try:
        for host, _ in hosts:
            ipaddress.IPv4Address(host)
    except ValueError:
        return f"{hosts[0][0]}:{hosts[0][1]}"  # gRPC lists only take IPs; use the first name
    return "ipv4:" + ",".join(f"{h}:{p}" for h, p in hosts)


def classify(exc: BaseException, target: str) -> StoreError:
    """Map a gRPC / aetcd error to the store's tree."""
    if isinstance(exc, aetcd.exceptions.RevisionCompactedError):
        return RevisionCompacted(int(exc.compacted_revision))
    if isinstance(exc, aetcd.exceptions.ConnectionFailedError | aetcd.exceptions.ConnectionTimeoutError):
        return StoreUnavailable(f"etcd at {target} is unreachable: {exc}")
    if isinstance(exc, grpc.aio.AioRpcError):
        code, details = exc.code(), exc.details() or ""
        if code in _UNAVAILABLE:
            return StoreUnavailable(f"etcd at {target} is unreachable ({code.name}): {details}")
        if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
            return RevisionCompacted(0)
        return StoreError(f"etcd at {target} refused the request ({code.name}): {details}")
    return StoreError(f"etcd at {target}: {exc!r}")


class EtcdKV:
    """KV, lease, maintenance and watch stubs over one gRPC channel."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 10.0, tls: TlsFiles | None = None) -> None:
        self.target = grpc_target(endpoints)
        self.timeout = timeout
        if endpoint_scheme(endpoints) == "https":
            if tls is None:
                raise ValueError("an https:// etcd needs its CA (--etcd-cacert), and usually a client certificate "
                                 "and key (--etcd-cert, --etcd-key)")
            self._channel = rpc.secure_channel(self.target, tls.credentials(), options=_CHANNEL_OPTIONS)
        else:
            if tls is not None:
                raise ValueError("TLS files were given for a plain http:// or unix:// etcd endpoint; use https://")
            self._channel = rpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any, *, retry_for: float = 0.0) -> Any:
        """One RPC. ``retry_for``: an idempotent read is retried for that long while etcd is unavailable
        (a member died, a raft election: "leader changed"), so callers do not see a failover."""
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await method(request, timeout=self.timeout)
            except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as exc:
                err = classify(exc, self.target)
                if not isinstance(err, StoreUnavailable) or waited >= retry_for:
                    raise err from exc
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.5)

    async def range(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        revision: int = 0,
        limit: int = 0,
        descend: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> Any:
        request = rpc.RangeRequest(
            key=key, range_end=range_end or b"", revision=revision, limit=limit,
            keys_only=keys_only, count_only=count_only,
        )
        if descend:
            request.sort_order = rpc.RangeRequest.DESCEND
            request.sort_target = rpc.RangeRequest.KEY
        return await self._call(self._kv.Range, request, retry_for=READ_RETRY_S)

    async def range_prefix(
        self, prefix: bytes, *, revision: int = 0, page: int = 5000
    ) -> tuple[list[Any], int]:
        """Every key under ``prefix`` at one revision, read in pages; returns (kvs, revision)."""
        end = prefix_end(prefix)
        kvs: list[Any] = []
        start = prefix
        while True:
            resp = await self.range(start, end, revision=revision, limit=page)
            revision = revision or resp.header.revision
            kvs.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return kvs, revision
            start = resp.kvs[-1].key + b"\0"

    async def txn(self, compare: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()) -> Any:
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return await self._call(self._kv.Txn, request)

    async def delete_prefix(self, prefix: bytes) -> int:
        """Delete every key under ``prefix`` (tests, maintenance); returns how many."""
        request = rpc.DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix))
        resp = await self._call(self._kv.DeleteRange, request)
        return int(resp.deleted)

    async def delete_range(self, key: bytes, range_end: bytes) -> int:
        """Delete every key in [key, range_end); returns how many."""
        resp = await self._call(self._kv.DeleteRange, rpc.DeleteRangeRequest(key=key, range_end=range_end))
        return int(resp.deleted)

    async def revision(self) -> int:
        resp = await self.range(b"/", count_only=True)
        return int(resp.header.revision)

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._call(self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Refresh a lease once; returns its new TTL (0: the lease is gone)."""
        try:
            call = self._lease.LeaseKeepAlive()
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            resp = await asyncio.wait_for(call.read(), self.timeout)
            call.cancel()
        except (grpc.aio.AioRpcError, aetcd.exceptions.ClientError) as exc:
            raise classify(exc, self.target) from exc
        except TimeoutError as exc:
            raise StoreUnavailable(f"etcd at {self.target} did not answer a lease keep-alive") from exc
        return int(resp.TTL)

    async def lease_revoke(self, lease_id: int) -> None:
        await self._call(self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        await self._call(self._kv.Compact, rpc.CompactionRequest(revision=revision, physical=physical))

    def open_watch(self) -> Any:
        """A bidirectional Watch stream; the caller writes the create request and cancels it."""
        return self._watch.Watch()


async def scan_newest(
    kv: EtcdKV, start: bytes, end: bytes, limit: int, decode: Callable[[bytes], T | None]
) -> list[T]:
    """The newest ``limit`` values in [start, end) that ``decode`` keeps (None: skip), oldest first. Keys
    sort by time (events, audit records); read backwards in pages of 1,000."""
    found: list[T] = []
    while len(found) < limit:
        resp = await kv.range(start, end, limit=1000, descend=True)
        for item in resp.kvs:
            value = decode(item.value)
            if value is None:
                continue
            found.append(value)
            if len(found) >= limit:
                break
        if not resp.more or not resp.kvs:
            break
        end = bytes(resp.kvs[-1].key)
    return found[::-1]


# Request builders: plain protobuf messages, built once per operation (fast for 10k objects).

def compare_mod(key: bytes, mod_revision: int) -> Any:
    """``mod_revision(key) == mod_revision``; 0 means "the key does not exist"."""
    if mod_revision == 0:
        return rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)
    return rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=mod_revision)


def compare_exists(key: bytes) -> Any:
    return rpc.Compare(key=key, target=rpc.Compare.VERSION, result=rpc.Compare.GREATER, version=0)


def compare_lease(key: bytes, lease: int) -> Any:
    """``lease(key) == lease`` (the key is held under that lease)."""
    return rpc.Compare(key=key, target=rpc.Compare.LEASE, result=rpc.Compare.EQUAL, lease=lease)


def op_put(key: bytes, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))


def op_delete(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def op_get(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))
