from __future__ import annotations

from typing import Any


def assert_problem_shape(body: Any, status: int) -> None:
    """RFC 9457 section 3: a JSON object; type and title strings; status an int equal to the response's."""
    assert isinstance(body, dict)
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert type(body["status"]) is int and body["status"] == status
    for member in ("detail", "instance"):
        if member in body:
            assert isinstance(body[member], str)
