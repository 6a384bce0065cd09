"""The garbage collector of a long-running bridge process (the ingress and the worker).

The start-up heap (imports, settings, open backends, actors) never becomes garbage: frozen, the collector stops
re-scanning it. A larger first generation (10,000 allocations instead of CPython's 700) collects ~14x less often.
Measured, one worker in the end-to-end bench at 1,000 msgs/s for ~10 s (gc.callbacks): 317 collections taking
316 ms in all, the longest a 55 ms full collection (a pause every message in flight waits through), against 8
taking 21 ms, the longest 7 ms. In one ingress worker at 4k req/s: 7.1 -> 0.2 µs of collector time per request.
"""

from __future__ import annotations

import gc

GC_THRESHOLD = 10_000  # allocations between young-generation collections (CPython's default: 700)


def freeze_startup_heap() -> None:
    """Call once the process is set up, before it takes work."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 50, 100)
