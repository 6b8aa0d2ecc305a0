"""Disk images with ``qemu-img`` (and http(s) downloads): inspect, convert with progress, check.

Runs where the controller runs, on paths it sees (like snapshot copies): a storage domain's directory must
be mounted there too. Every failure is an :class:`ImageError` (terminal: retrying the same input fails
the same way) with a ``code`` the Disk controller reports as the reason:

- ``SourceMissing`` — no such file; ``SourceUnreachable`` — the URL answered an error or not at all;
- ``FormatMismatch`` — the file is not in the declared format;
- ``SourceCorrupt`` — qemu-img cannot read it, or ``qemu-img check`` finds errors;
- ``ConvertFailed`` — ``qemu-img convert`` failed for another reason.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from controller.common.errors import TerminalError

Progress = Callable[[int], Coroutine[Any, Any, None]]  # percent done, 0..100
_PERCENT = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
CHUNK = 1 << 20


class ImageError(TerminalError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, op="qemu-img")
        self.reason = code


@dataclass(frozen=True)
class ImageInfo:
    format: str
    virtual_size: int


async def _qemu_img(*args: str) -> tuple[int, str, str]:
    done = await anyio.run_process(["qemu-img", *args], check=False)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace").strip()


async def image_info(path: str, declared: str | None) -> ImageInfo:
    """What the file is. With ``declared``, the file must be in that format (qemu-img's own probe agrees;
    raw is accepted only when the probe finds no other format)."""
    if not os.path.exists(path):
        raise ImageError("SourceMissing", f"{path}: no such file")
    code, out, err = await _qemu_img("info", "-U", "--output=json", path)
    if code != 0:
        raise ImageError("SourceCorrupt", f"qemu-img cannot read {path}: {err}")
    probed = json.loads(out)
    if declared is not None and probed["format"] != declared:
        raise ImageError("FormatMismatch", f"{path} is declared {declared} but qemu-img finds {probed['format']}")
    fmt = declared or probed["format"]
    code, out, err = await _qemu_img("info", "-U", "-f", fmt, "--output=json", path)
    if code != 0:
        raise ImageError("SourceCorrupt", f"{path} cannot be read as {fmt}: {err}")
    return ImageInfo(fmt, int(json.loads(out)["virtual-size"]))


async def download(url: str, dest: Path, progress: Progress) -> None:
    """Fetch ``url`` into ``dest`` (replaced atomically when complete)."""
    partial = dest.with_name(dest.name + ".part")
    reported = -1

    def fetch(report: Callable[[int], None]) -> None:
        try:
            with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if total:
                        report(done * 100 // total)
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the response's socket
            raise ImageError("SourceUnreachable", f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ImageError("SourceUnreachable", f"{url}: {getattr(exc, 'reason', exc)}") from exc

    def report(percent: int) -> None:
        nonlocal reported
        if percent >= reported + 5:
            reported = percent
            anyio.from_thread.run(progress, percent)

    try:
        await anyio.to_thread.run_sync(fetch, report)
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


async def convert(source: str, source_format: str, dest: str, dest_format: str, progress: Progress) -> None:
    """``qemu-img convert -p``, reporting progress; the destination appears only when complete."""
    partial = dest + ".part"
    args = ["qemu-img", "convert", "-p", "-U", "-f", source_format, "-O", dest_format, source, partial]
    reported = -1
    try:
        async with await anyio.open_process(args) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            async for chunk in proc.stdout:
                for match in _PERCENT.finditer(chunk):
                    percent = int(float(match.group(1)))
                    if percent >= reported + 5:
                        reported = percent
                        await progress(percent)
            err_bytes = b""
            async for chunk in proc.stderr:
                err_bytes += chunk
            code = await proc.wait()
            err = err_bytes.decode(errors="replace").strip()
        if code != 0:
            raise ImageError("ConvertFailed", f"qemu-img convert of {source} ({source_format}) failed: {err}")
        os.replace(partial, dest)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


async def check(path: str, fmt: str) -> None:
    """``qemu-img check`` (formats that support it; raw has nothing to check)."""
    if fmt == "raw":
        return
    code, _, err = await _qemu_img("check", "-U", "-f", fmt, path)
    if code not in (0,):
        raise ImageError("SourceCorrupt", f"qemu-img check of the imported {path} failed (exit {code}): {err}")
