"""Timeouts, deadlines and load shedding."""

from __future__ import annotations

from asgi_resilience.timeout._deadline import current_deadline, deadline_scope, remaining_time

__all__ = ["current_deadline", "deadline_scope", "remaining_time"]
