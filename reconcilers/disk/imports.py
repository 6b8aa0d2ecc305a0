"""Where an image import may read from. Pure.

A Disk's ``source.import.path`` is read by the server (as root), so it must lie inside a directory the
operator allowed: a storage domain's image directory, or one given with ``virtplane server --import-dir``.
``import_refusal`` is the one place that decides (the caller resolves symlinks first); a broader host-path
policy can replace it without touching the callers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable


def _inside(path: str, directory: str) -> bool:
    directory = posixpath.normpath(directory)
    return posixpath.commonpath([path, directory]) == directory


def import_refusal(path: str, allowed: Iterable[str]) -> str | None:
    """Why the server may not read ``path`` for an import (None: it may). ``path`` is absolute, with
    symlinks already resolved."""
    if not posixpath.isabs(path):
        return f"import path {path!r} is not absolute"
    path = posixpath.normpath(path)
    dirs = sorted({posixpath.normpath(d) for d in allowed if d})
    if any(_inside(path, d) for d in dirs):
        return None
    where = ", ".join(dirs) if dirs else "none configured"
    return (f"import path {path} is outside the directories the server may read (storage domains and "
            f"--import-dir: {where}); move the image there or start the server with --import-dir")
