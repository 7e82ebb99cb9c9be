"""Process-wide testing switch for the outbound transports (stamina's ``set_testing``)."""

from __future__ import annotations

from types import TracebackType

__all__ = ["TestingMode", "set_testing", "testing_attempts", "testing_enabled"]

_state: dict[str, object] = {"on": False, "attempts": None}


class TestingMode:
    """Returned by :func:`set_testing`; also a context manager that restores the previous mode."""

    __test__ = False  # not a pytest test class

    def __init__(self, previous: tuple[object, object]) -> None:
        self._previous = previous

    def __enter__(self) -> TestingMode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _state["on"], _state["attempts"] = self._previous


def set_testing(on: bool = True, *, attempts: int | None = None) -> TestingMode:
    """Turn testing mode on or off: no backoff sleeps, and at most ``attempts`` attempts if given.

    Decisions are unchanged (a ``Retry-After`` longer than the deadline still stops the call);
    only the waiting is skipped. Use as a call or as ``with set_testing(): ...``.
    """
    if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
        raise ValueError(f"attempts must be an int >= 1 or None, got {attempts!r}")
    previous = (_state["on"], _state["attempts"])
    _state["on"] = bool(on)
    _state["attempts"] = attempts if on else None
    return TestingMode(previous)


def testing_enabled() -> bool:
    return bool(_state["on"])


def testing_attempts() -> int | None:
    value = _state["attempts"]
    return value if isinstance(value, int) else None
