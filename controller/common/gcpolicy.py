"""How often CPython's cyclic garbage collector runs in our processes.

The default (a young collection every 700 allocations, older ones every 10 of those) is tuned for small
heaps. Ours hold tens of thousands of long-lived objects (specs, caches of libvirt state), and a bulk
request allocates millions of short-lived dicts while they are alive; measured in one process with
10,000 VMs loaded: ``json.loads`` of a 5 MB apply body 0.29-0.44 s with the default against 0.07 s with
the thresholds below, validation of its 10,000 objects 0.44 s against 0.22 s (bench/RESULTS.md). Nearly
everything we allocate is freed by reference counting; the collector only finds cycles, and finding them
a little later costs some memory, not correctness.
"""

from __future__ import annotations

import gc

# A young collection every 50,000 net allocations; the middle generation every 20 of those, the oldest
# every 10 middle ones (and, as always in CPython, only when it has grown by a quarter since the last).
THRESHOLDS = (50_000, 20, 10)


def tune(*, freeze: bool = False) -> None:
    """Set the thresholds; with ``freeze``, move everything alive now (modules, classes, validators built
    at import) out of the collector's sight for good: call it once, after start-up."""
    gc.set_threshold(*THRESHOLDS)
    if freeze:
        gc.collect()
        gc.freeze()
