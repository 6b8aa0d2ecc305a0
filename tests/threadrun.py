"""Run a coroutine function to completion from synchronous test code.

The session keeps anyio's test event loop open in the main thread (see ``tests/conftest.py``), so
``anyio.run`` there fails with "Already running asyncio in this thread" once any async test has
run. A thread of its own has no loop yet."""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def run_in_thread(coro_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = anyio.run(functools.partial(coro_fn, *args))
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]
