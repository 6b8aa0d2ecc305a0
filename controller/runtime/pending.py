"""Live requests a guest must acknowledge (ACPI unplug of a disk or NIC, a balloon target), per VM.

In memory only, owned by the VirtualMachine controller: ``reconcilers.vm.live`` turns "asked N seconds ago"
into a pending or not-acknowledged condition instead of asking again. A restart forgets them; the only
effect is that each such request is made once more (they are idempotent for libvirt).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class PendingRequests:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._asked: dict[str, dict[str, float]] = {}  # vm -> request key -> when asked (monotonic)

    def note(self, vm: str, key: str) -> None:
        """Remember that ``key`` was requested for ``vm`` (the first time only)."""
        self._asked.setdefault(vm, {}).setdefault(key, self.clock())

    def ages(self, vm: str) -> dict[str, float]:
        """Request key -> seconds since it was made."""
        now = self.clock()
        return {k: now - t for k, t in self._asked.get(vm, {}).items()}

    def keys(self, vm: str) -> Iterable[str]:
        return tuple(self._asked.get(vm, ()))

    def forget(self, vm: str, key: str) -> None:
        asked = self._asked.get(vm)
        if asked is not None:
            asked.pop(key, None)
            if not asked:
                del self._asked[vm]

    def waiting(self, vm: str, deadline_s: float) -> bool:
        """True while some request of ``vm`` is younger than ``deadline_s``."""
        return any(age < deadline_s for age in self.ages(vm).values())
