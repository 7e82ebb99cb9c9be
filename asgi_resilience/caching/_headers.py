"""Field parsers of the response cache: strict grammars, and never an exception on bad input.

Every parser here takes raw header bytes from the network and returns a value or ``None``; a
malformed value is the sender's problem, never a 500. Numbers are ASCII ``DIGIT`` only
(RFC 5234 appendix B.1: ``%x30-39``), so ``²`` or ``٣`` are invalid, not numbers.

* RFC 9110 section 5.6.7: ``HTTP-date`` is an ``IMF-fixdate`` or one of the two obsolete formats
  (``rfc850-date``, ``asctime-date``), exactly as the grammar spells them (case-sensitive, single
  spaces, ``GMT``); anything else is invalid.
* RFC 9111 section 5.2: ``Cache-Control`` directives; section 1.2.2: ``delta-seconds``;
  section 5.1: ``Age`` (a list keeps its first member).
* RFC 9213: targeted cache-control fields (``CDN-Cache-Control``) are Structured Field
  Dictionaries (RFC 8941 section 3.2); an invalid one is ignored as a whole.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Sequence

__all__ = [
    "MAX_SECONDS",
    "content_length",
    "delta_seconds",
    "field_names",
    "header",
    "headers_all",
    "parse_age",
    "parse_cache_control",
    "parse_http_date",
    "parse_targeted",
]

RawHeaders = Sequence[tuple[bytes, bytes]]
Directives = dict[str, "str | None"]

MAX_SECONDS = 10 * 365 * 86400.0
_DIGITS = re.compile(rb"[0-9]+")
_DIGITS_STR = re.compile(r"[0-9]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# --- HTTP-date (RFC 9110 section 5.6.7) ---------------------------------------------------------------

_MONTHS = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}
_DAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_L = rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# IMF-fixdate = day-name "," SP day SP month SP year SP time-of-day SP GMT
_IMF_FIXDATE = re.compile(_DAY + rb", ([0-9]{2}) " + _MONTH + rb" ([0-9]{4}) " + _TIME + rb" GMT")
# rfc850-date = day-name-l "," SP day "-" month "-" 2DIGIT SP time-of-day SP GMT
_RFC850 = re.compile(_DAY_L + rb", ([0-9]{2})-" + _MONTH + rb"-([0-9]{2}) " + _TIME + rb" GMT")
# asctime-date = day-name SP month SP ( 2DIGIT / ( SP DIGIT ) ) SP time-of-day SP year
_ASCTIME = re.compile(_DAY + rb" " + _MONTH + rb" ([0-9]{2}| [0-9]) " + _TIME + rb" ([0-9]{4})")


def _timestamp(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float | None:
    if not 1 <= day <= calendar.monthrange(year, month)[1] or hour > 23 or minute > 59 or second > 60:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def parse_http_date(value: bytes | None, *, now_year: int | None = None) -> float | None:
    """An ``HTTP-date`` as a POSIX timestamp, or None when absent or not exactly one of the three forms.

    Only optional whitespace around the value is tolerated. A two-digit ``rfc850-date`` year that
    would be more than 50 years in the future is the most recent past year with those digits
    (RFC 9110 section 5.6.7); ``now_year`` is the reference year (today's by default).
    """
    if value is None:
        return None
    text = value.strip(b" \t")
    if (m := _IMF_FIXDATE.fullmatch(text)) is not None:
        day, month, year, hh, mm, ss = m.groups()
        return _timestamp(int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss))
    if (m := _RFC850.fullmatch(text)) is not None:
        day, month, yy, hh, mm, ss = m.groups()
        current = now_year if now_year is not None else _this_year()
        year = current - current % 100 + int(yy)
        if year > current + 50:
            year -= 100
        return _timestamp(year, _MONTHS[month], int(day), int(hh), int(mm), int(ss))
    if (m := _ASCTIME.fullmatch(text)) is not None:
        month, day, hh, mm, ss, year = m.groups()
        return _timestamp(int(year), _MONTHS[month], int(day.strip()), int(hh), int(mm), int(ss))
    return None


def _this_year() -> int:
    return time.gmtime().tm_year


# --- plain header access ---------------------------------------------------------------------------


def header(headers: RawHeaders, name: bytes) -> bytes | None:
    """The first value of ``name`` (a lower-case field name), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def headers_all(headers: RawHeaders, name: bytes) -> list[bytes]:
    return [value for key, value in headers if key.lower() == name]


def field_names(values: Iterable[bytes]) -> list[bytes]:
    """Lower-cased field names of comma-separated lists (``Vary``, ``Connection``, ``private="a, b"``)."""
    names: list[bytes] = []
    for raw in values:
        for piece in raw.split(b","):
            piece = piece.strip().lower()
            if piece and piece not in names:
                names.append(piece)
    return names


def content_length(headers: RawHeaders) -> int | None:
    """The ``Content-Length`` (ASCII digits only), or None when absent or invalid."""
    value = header(headers, b"content-length")
    if value is None:
        return None
    value = value.strip(b" \t")
    return int(value) if _DIGITS.fullmatch(value) else None


def parse_age(headers: RawHeaders) -> tuple[float, bool]:
    """``(age, valid)`` from ``Age`` (RFC 9111 section 5.1): a list keeps its first member.

    No ``Age`` is ``(0, True)``; anything but ASCII digits after taking the first member is
    ``(0, False)``, which callers treat as "already stale".
    """
    values = headers_all(headers, b"age")
    if not values:
        return 0.0, True
    first = values[0].split(b",", 1)[0].strip(b" \t")
    if not _DIGITS.fullmatch(first):
        return 0.0, False
    return min(float(int(first)), MAX_SECONDS), True


# --- Cache-Control (RFC 9111 section 5.2) ---------------------------------------------------------


def parse_cache_control(values: Iterable[bytes]) -> Directives:
    """Directives of every ``Cache-Control`` field value, names lower-cased, first occurrence wins.

    Quoted values keep their content (``no-cache="set-cookie"`` -> ``"set-cookie"``); malformed
    pieces are skipped rather than failing the request.
    """
    out: Directives = {}
    for raw in values:
        text = raw.decode("latin-1")
        for part in _split_commas(text):
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            if not name or name in out or not _TOKEN.fullmatch(name.encode("latin-1")):
                continue
            if not sep:
                out[name] = None
            else:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                out[name] = value
    return out


def _split_commas(text: str) -> list[str]:
    if '"' not in text:  # nothing quoted: every comma separates
        return [p for p in (piece.strip() for piece in text.split(",")) if p]
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def delta_seconds(directives: Directives, name: str) -> float | None:
    """A ``delta-seconds`` directive (RFC 9111 section 1.2.2); present but invalid counts as 0."""
    if name not in directives:
        return None
    value = directives[name]
    if value is None or not _DIGITS_STR.fullmatch(value):
        return 0.0
    return min(float(int(value)), MAX_SECONDS)


# --- targeted fields: Structured Field Dictionaries (RFC 8941 section 4.2.2) --------------------------

_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz*")
_KEY_CHARS = _KEY_FIRST | frozenset("0123456789_-.")
_TOKEN_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz*")
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz:/")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_NOT_A_VALUE = object()  # an inner list or byte sequence: valid syntax, no meaning as a directive


class _Invalid(Exception):
    pass


class _SFParser:
    """Just enough of RFC 8941 to read a Dictionary of cache directives; raises _Invalid."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip(self, chars: str) -> None:
        while self.i < len(self.s) and self.s[self.i] in chars:
            self.i += 1

    def key(self) -> str:
        if self.peek() not in _KEY_FIRST or not self.peek():
            raise _Invalid
        start = self.i
        while self.peek() and self.peek() in _KEY_CHARS:
            self.i += 1
        return self.s[start : self.i]

    def dictionary(self) -> dict[str, object]:
        out: dict[str, object] = {}
        while self.i < len(self.s):
            name = self.key()
            value: object = True
            if self.peek() == "=":
                self.i += 1
                value = self.inner_list() if self.peek() == "(" else self.bare_item()
            self.parameters()
            out[name] = value  # a repeated key overwrites (RFC 8941 section 4.2.2)
            self.skip(" \t")
            if self.i >= len(self.s):
                return out
            if self.peek() != ",":
                raise _Invalid
            self.i += 1
            self.skip(" \t")
            if self.i >= len(self.s):
                raise _Invalid  # trailing comma
        return out

    def parameters(self) -> None:
        while self.peek() == ";":
            self.i += 1
            self.skip(" ")
            self.key()
            if self.peek() == "=":
                self.i += 1
                self.bare_item()

    def inner_list(self) -> object:
        self.i += 1
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.i += 1
                self.parameters()
                return _NOT_A_VALUE
            self.bare_item()
            self.parameters()
            if self.peek() not in (" ", ")"):
                raise _Invalid

    def bare_item(self) -> object:
        ch = self.peek()
        if ch == "-" or ch.isascii() and ch.isdigit():
            return self.number()
        if ch == '"':
            return self.string()
        if ch == ":":
            end = self.s.find(":", self.i + 1)
            if end < 0 or any(c not in _BASE64 for c in self.s[self.i + 1 : end]):
                raise _Invalid
            self.i = end + 1
            return _NOT_A_VALUE
        if ch == "?":
            flag = self.s[self.i + 1 : self.i + 2]
            if flag not in ("0", "1"):
                raise _Invalid
            self.i += 2
            return flag == "1"
        if ch and ch in _TOKEN_FIRST:
            start = self.i
            while self.peek() and self.peek() in _TCHARS:
                self.i += 1
            return self.s[start : self.i]
        raise _Invalid

    def number(self) -> object:
        start = self.i
        if self.peek() == "-":
            self.i += 1
        digits_start = self.i
        while self.peek().isascii() and self.peek().isdigit() and self.peek():
            self.i += 1
        whole = self.i - digits_start
        if whole == 0:
            raise _Invalid
        if self.peek() != ".":
            if whole > 15:
                raise _Invalid
            return int(self.s[start : self.i])
        if whole > 12:
            raise _Invalid
        self.i += 1
        frac_start = self.i
        while self.peek().isascii() and self.peek().isdigit() and self.peek():
            self.i += 1
        if not 1 <= self.i - frac_start <= 3:
            raise _Invalid
        return float(self.s[start : self.i])

    def string(self) -> str:
        self.i += 1
        out: list[str] = []
        while self.i < len(self.s):
            ch = self.s[self.i]
            self.i += 1
            if ch == "\\":
                nxt = self.s[self.i : self.i + 1]
                if nxt not in ('"', "\\"):
                    raise _Invalid
                out.append(nxt)
                self.i += 1
            elif ch == '"':
                return "".join(out)
            elif not " " <= ch <= "~":
                raise _Invalid
            else:
                out.append(ch)
        raise _Invalid


def parse_targeted(values: Sequence[bytes]) -> Directives | None:
    """Directives of a targeted field (RFC 9213), or None when it is absent, invalid or empty.

    The field lines are combined and parsed as an RFC 8941 Dictionary; a directive set to
    ``?0`` is absent, a bare one is present without value, numbers and strings become text.
    """
    if not values:
        return None
    try:
        text = b", ".join(values).decode("ascii").strip(" ")
    except UnicodeDecodeError:
        return None
    try:
        parsed = _SFParser(text).dictionary()
    except _Invalid:
        return None
    out: Directives = {}
    for name, value in parsed.items():
        if value is True:
            out[name] = None
        elif value is False or value is _NOT_A_VALUE:
            continue
        else:
            out[name] = str(value)
    return out or None
