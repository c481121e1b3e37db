"""How long to wait between retries, as ``cubbyhole unwrap`` does (``backoff`` and
``backoff_ceiling`` in ``src/agent/unwrap.rs``): 0.5 s doubling up to 8 s, each delay a random
point in the upper half of its step so agents that failed together do not retry together."""

from __future__ import annotations

import random
from typing import Optional

#: First retry's longest delay, seconds.
FIRST_BACKOFF = 0.5
#: Longest delay between two retries, seconds.
MAX_BACKOFF = 8.0
#: Longest wait before asking the endpoint again, whatever ``Retry-After`` says, seconds.
MAX_WAIT = 30.0


def backoff_ceiling(retry: int) -> float:
    """The longest delay before retry number ``retry`` (0-based): 0.5 s doubling up to 8 s."""
    # 0.5 * 2**5 is already past the cap: no need for larger powers.
    return min(FIRST_BACKOFF * float(1 << min(max(retry, 0), 5)), MAX_BACKOFF)


def backoff(retry: int) -> float:
    """Delay before retry number ``retry``: a random point in the upper half of its ceiling."""
    ceiling = backoff_ceiling(retry)
    half = ceiling / 2
    return half + half * random.random()


def retry_wait(retry: int, retry_after: Optional[float] = None) -> float:
    """Wait before asking the endpoint again: the larger of ``Retry-After`` and the backoff,
    at most 30 s."""
    return min(max(retry_after or 0.0, backoff(retry)), MAX_WAIT)
