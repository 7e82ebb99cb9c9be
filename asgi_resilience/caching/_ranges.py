"""Byte ranges answered from a complete stored response (RFC 9110 section 14), without I/O.

The cache never stores a partial response: a ``Range`` miss is forwarded without ``Range`` so
that the complete ``200`` can be stored, and ranges are cut from it here:

* one satisfiable range: ``206`` with ``Content-Range: bytes first-last/length``;
* several: ``206`` ``multipart/byteranges`` (overlapping ranges are coalesced first, section 14.6);
* none satisfiable: ``416`` with ``Content-Range: bytes */length`` (section 15.5.17);
* an ``If-Range`` that does not match the stored validator, an invalid ``Range``, another unit,
  or too many ranges: the whole ``200`` (a server may always ignore ``Range``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from asgi_resilience.caching._headers import header, parse_http_date

__all__ = ["MAX_RANGES", "Unsatisfiable", "if_range_matches", "parse_ranges", "render_range"]

RawHeaders = Sequence[tuple[bytes, bytes]]
Ranges = list[tuple[int, int]]  # inclusive (first, last) byte positions
MAX_RANGES = 64
_SPEC = re.compile(rb"([0-9]{1,18})?-([0-9]{1,18})?")
_REPLACED = frozenset({b"content-length", b"content-range", b"content-type"})


class Unsatisfiable:
    """Every range lies beyond the representation: answer 416."""


UNSATISFIABLE = Unsatisfiable()


def parse_ranges(value: bytes, length: int) -> Ranges | Unsatisfiable | None:
    """The satisfiable ranges of a ``Range`` value against ``length`` bytes.

    None: ignore ``Range`` and send the whole representation (not ``bytes``, invalid syntax, too
    many ranges, or an empty representation). Ranges that overlap are coalesced in ascending order.
    """
    unit, sep, spec = value.partition(b"=")
    if not sep or unit.lower() != b"bytes" or length <= 0:
        return None
    ranges: Ranges = []
    count = 0
    for piece in spec.split(b","):
        piece = piece.strip(b" \t")
        if not piece:
            continue  # empty list elements are allowed (RFC 9110 section 5.6.1)
        count += 1
        m = _SPEC.fullmatch(piece)
        if m is None or count > MAX_RANGES:
            return None
        first_raw, last_raw = m.groups()
        if first_raw is None:
            if last_raw is None:
                return None
            suffix = int(last_raw)
            if suffix > 0:
                ranges.append((max(0, length - suffix), length - 1))
            continue
        first = int(first_raw)
        if last_raw is not None and int(last_raw) < first:
            return None  # an invalid range-spec makes the whole field invalid
        if first < length:
            last = length - 1 if last_raw is None else min(int(last_raw), length - 1)
            ranges.append((first, last))
    if count == 0:
        return None
    if not ranges:
        return UNSATISFIABLE
    return _coalesce(ranges)


def _coalesce(ranges: Ranges) -> Ranges:
    ordered = sorted(ranges)
    if all(a[1] < b[0] for a, b in zip(ordered, ordered[1:], strict=False)):
        return ranges  # disjoint: keep the client's order
    merged: Ranges = [ordered[0]]
    for first, last in ordered[1:]:
        if first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def if_range_matches(value: bytes, etag: bytes | None, last_modified: bytes | None) -> bool:
    """RFC 9110 section 13.1.5: a strong comparison of the entity-tag, or the exact Last-Modified date."""
    value = value.strip(b" \t")
    if value.startswith((b'"', b"W/")):
        return etag is not None and not etag.startswith(b"W/") and not value.startswith(b"W/") and value == etag
    date = parse_http_date(value)
    return date is not None and last_modified is not None and parse_http_date(last_modified) == date


def render_range(
    status: int,
    headers: RawHeaders,
    body: bytes,
    request_headers: RawHeaders,
    *,
    boundary: str | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
    """The ``206``/``416`` answer to the request's ``Range`` from a complete ``200``, or None for the whole ``200``.

    ``headers`` are the stored response's (lower-case names); ``boundary`` separates multipart parts
    (a random one by default).
    """
    if status != 200:
        return None
    range_value = header(request_headers, b"range")
    if range_value is None:
        return None
    if_range = header(request_headers, b"if-range")
    if if_range is not None and not if_range_matches(
        if_range, header(headers, b"etag"), header(headers, b"last-modified")
    ):
        return None
    length = len(body)
    ranges = parse_ranges(range_value, length)
    if ranges is None:
        return None
    kept = [(k, v) for k, v in headers if k not in _REPLACED]
    if isinstance(ranges, Unsatisfiable):
        out = [(k, v) for k, v in kept if k in (b"date", b"etag", b"last-modified", b"cache-control", b"vary")]
        return 416, [*out, (b"content-range", b"bytes */%d" % length), (b"content-length", b"0")], b""
    if len(ranges) == 1:
        first, last = ranges[0]
        part = body[first : last + 1]
        content_type = header(headers, b"content-type")
        extra = [(b"content-type", content_type)] if content_type is not None else []
        return (
            206,
            [
                *kept,
                *extra,
                (b"content-range", b"bytes %d-%d/%d" % (first, last, length)),
                (b"content-length", str(len(part)).encode()),
            ],
            part,
        )
    content_type = header(headers, b"content-type")
    boundary = boundary or secrets.token_hex(12)
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for first, last in ranges:
        chunks.append(delimiter + b"\r\n")
        if content_type is not None:
            chunks.append(b"content-type: " + content_type + b"\r\n")
        chunks.append(b"content-range: bytes %d-%d/%d\r\n\r\n" % (first, last, length))
        chunks.append(body[first : last + 1] + b"\r\n")
    chunks.append(delimiter + b"--\r\n")
    payload = b"".join(chunks)
    return (
        206,
        [
            *kept,
            (b"content-type", b"multipart/byteranges; boundary=" + boundary.encode("ascii")),
            (b"content-length", str(len(payload)).encode()),
        ],
        payload,
    )
