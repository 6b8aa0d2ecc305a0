"""Run an agent program off the event loop with a hard deadline (anyio subprocess).

The program gets its own session (process group), so a timeout kills it and everything it started
(fence_ipmilan runs ipmitool) with one SIGKILL to the group. Input goes on stdin, never on argv.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream, Process


@dataclass(frozen=True)
class ProgramOutcome:
    returncode: int | None  # None: killed at the deadline
    stdout: str
    stderr: str
    duration_s: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


async def _drain(stream: ByteReceiveStream | None, into: list[bytes]) -> None:
    if stream is None:
        return
    async for chunk in stream:
        into.append(chunk)


def _kill_group(process: Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def run_program(
    argv: Sequence[str], *, stdin: bytes, timeout: float, env: Mapping[str, str] | None = None
) -> ProgramOutcome:
    """Run ``argv`` with ``stdin``; kill its process group if it has not exited after ``timeout`` s."""
    started = time.monotonic()
    out: list[bytes] = []
    err: list[bytes] = []
    process = await anyio.open_process(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    returncode: int | None = None
    try:
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, process.stdout, out)
                tg.start_soon(_drain, process.stderr, err)
                if process.stdin is not None:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await process.stdin.send(stdin)
                    await process.stdin.aclose()
                returncode = await process.wait()
    finally:
        if returncode is None:
            # Not reaped yet, so its pid (= the group id) cannot have been reused.
            _kill_group(process)
            with anyio.CancelScope(shield=True):
                await process.wait()
        await process.aclose()
    return ProgramOutcome(
        returncode,
        b"".join(out).decode(errors="replace"),
        b"".join(err).decode(errors="replace"),
        time.monotonic() - started,
    )
