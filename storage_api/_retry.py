"""Retry with backoff, as small injected objects (the client's policy for transient faults).

Only :class:`~storage_api.errors.CommunicationError` is retried: the backend may have died, been
frozen or be restarting, and the object may be failing over to a replica. Mutating calls carry a
request id, so a retried call that had in fact been applied is not applied twice (see
:mod:`storage_api._backend._placement`). The clock, the sleep and the random source are injected
so the policy is tested with a fake clock.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``min(cap, base * factor**attempt)``, +- ``jitter`` of it."""

    base: float = 0.02
    factor: float = 2.0
    cap: float = 0.5
    jitter: float = 0.2

    def delay(self, attempt: int, rand: float) -> float:
        d = min(self.cap, self.base * self.factor ** attempt)
        return max(0.0, d * (1 + self.jitter * (2 * rand - 1)))


@dataclass
class Retry:
    """Attempts until ``deadline`` seconds have passed since the first (0 disables retrying)."""

    deadline: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random

    def attempts(self) -> Iterator[int]:
        """Yield 0, 1, 2, ... sleeping the backoff between them; stop at the deadline."""
        start = self.clock()
        attempt = 0
        while True:
            yield attempt
            pause = self.backoff.delay(attempt, self.rand())
            if self.clock() + pause - start > self.deadline:
                return
            self.sleep(pause)
            attempt += 1
