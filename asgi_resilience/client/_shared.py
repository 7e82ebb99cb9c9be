"""The transports' shared breaker state: the Redis glue lives in :mod:`asgi_resilience.policies`
(named breakers use it too); the transports read their keys at most every :data:`REFRESH` seconds.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from asgi_resilience.policies import _shared

__all__ = ["BACKOFF", "PREFIX", "REFRESH", "SharedState"]

BACKOFF = _shared.BACKOFF
PREFIX = _shared.PREFIX
REFRESH = _shared.REFRESH


class SharedState(_shared.SharedState):
    """Shared state of the breaker transports (one key per origin)."""

    log: ClassVar[logging.Logger] = logging.getLogger("asgi_resilience.client")

    def refresh(self) -> float:
        return REFRESH  # this module's: a test may lower it
