"""Import path kept for compatibility: the testing switch lives in :mod:`asgi_resilience.policies`."""

from __future__ import annotations

from asgi_resilience.policies._config import TestingMode, set_testing, testing_attempts, testing_enabled

__all__ = ["TestingMode", "set_testing", "testing_attempts", "testing_enabled"]
