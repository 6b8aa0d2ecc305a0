"""libvirt's event loop: ``libvirtaio`` on a dedicated asyncio loop in a daemon thread, made thread-safe.

Why not register ``libvirtaio`` on the application's loop, as its docstring suggests?

1. ``libvirtaio`` is not thread-safe. libvirt calls the event implementation (add/update/remove handles and
   timers) from whatever thread makes the API call — and ours run in worker threads
   (``anyio.to_thread.run_sync``). Stock ``libvirtaio`` then calls ``loop.add_reader`` and
   ``asyncio.ensure_future(..., loop=loop)`` from that foreign thread: the loop is not woken (a test-driver
   lifecycle event is never delivered) and asyncio's structures are mutated across threads.
2. libvirt accepts one event implementation per process, for the life of the process: bound to the first
   application loop, it would die with that loop (every pytest test has its own loop).

So :class:`_ThreadSafeAsyncIOImpl` marshals every implementation call onto its loop with
``call_soon_threadsafe`` (never blocking the calling thread, which may hold libvirt locks), and that loop runs
in its own thread. Domain events are handed to subscribers on their own loops, also thread-safely.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import libvirt
import libvirtaio

_lock = threading.Lock()
_impl: _ThreadSafeAsyncIOImpl | None = None


class _ThreadSafeAsyncIOImpl(libvirtaio.virEventAsyncIOImpl):  # type: ignore[misc]
    """``virEventAsyncIOImpl`` whose six callbacks may be called from any thread.

    Every mutation runs on the loop, in call order (``call_soon_threadsafe`` is FIFO). Only the id of a new
    handle/timer is allocated in the caller's thread (``Callback.__init__`` just draws from a counter).
    """

    def _add_handle(self, fd: int, event: int, cb: Any, opaque: Any) -> int:
        callback = libvirtaio.FDCallback(self, cb, opaque, descriptor=None, event=event)
        self.loop.call_soon_threadsafe(self._do_add_handle, callback, fd)
        return int(callback.iden)

    def _do_add_handle(self, callback: Any, fd: int) -> None:
        callback.descriptor = self.descriptors[fd]
        self.callbacks[callback.iden] = callback
        self.descriptors[fd].add_handle(callback)
        self._pending_inc()

    def _update_handle(self, watch: int, event: int) -> None:
        self.loop.call_soon_threadsafe(super()._update_handle, watch, event)

    def _remove_handle(self, watch: int) -> int:
        self.loop.call_soon_threadsafe(super()._remove_handle, watch)
        return 0

    def _add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        callback = libvirtaio.TimeoutCallback(self, cb, opaque)
        self.loop.call_soon_threadsafe(self._do_add_timeout, callback, timeout)
        return int(callback.iden)

    def _do_add_timeout(self, callback: Any, timeout: int) -> None:
        self.callbacks[callback.iden] = callback
        callback.update(timeout=timeout)
        self._pending_inc()

    def _update_timeout(self, timer: int, timeout: int) -> None:
        self.loop.call_soon_threadsafe(super()._update_timeout, timer, timeout)

    def _remove_timeout(self, timer: int) -> int:
        self.loop.call_soon_threadsafe(super()._remove_timeout, timer)
        return 0


def ensure_event_loop() -> asyncio.AbstractEventLoop:
    """Start (once per process) the thread running libvirt's event loop; return that loop.

    Must run before the first connection is opened: keepalive and events need it.
    """
    global _impl
    with _lock:
        if _impl is None:
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                started.set()
                loop.run_forever()

            impl = _ThreadSafeAsyncIOImpl(loop=loop)
            impl.register()
            libvirtaio._current_impl = impl  # what libvirtaio.getCurrentImpl() reports
            threading.Thread(target=run, name="libvirt-events", daemon=True).start()
            started.wait()
            _impl = impl
            # libvirt prints every error to stderr by default; we classify and raise them instead.
            libvirt.registerErrorHandler(_ignore_error, None)
        loop_: asyncio.AbstractEventLoop = _impl.loop
        return loop_


def _ignore_error(_ctx: object, _err: object) -> None:
    return None
