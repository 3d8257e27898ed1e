"""The endpoint web service's answer bodies -> JSON values, at a bounded cost.

Whoever answers for the service (or sits on the path to it) chooses the body. ``json.loads``
is fast but spends what the body asks for: 32 MiB of ``[{},{},...]`` took 845 MB, and
``[[[[...`` past the recursion limit raises RecursionError. So a body is

1. at most ``limit`` bytes (``resolver.endpointclient`` reads no more: 64 KiB for
   ``/version``, whose answer is a few dozen bytes, 4 MiB for ``/endpoints``, about 100 KB);
2. priced before it is parsed: from counts of its ``{`` ``[`` ``"`` ``,`` ``":`` and number
   starts (``bytes.count``, in C, on one copy of the body without whitespace) an upper bound of
   what ``json.loads`` would allocate is worked out, and a body priced above ``COST_FACTOR``
   (10) times its size plus ``COST_SLACK`` (256 KiB) is refused, having cost one copy of
   itself. Microsoft's answer is priced at 7 to 8 times its size (about 10 with text beyond
   ASCII, whose strings may all be wide) and takes about 4; ``[{},{},...]`` would take 25,
   ``[[],[],...]`` 22, ``["ab","ab",...]`` 13;
3. at most ``MAX_DEPTH`` (16) levels deep, counted outside strings before parsing (the
   service's answers are 3 deep);
4. UTF-8 (RFC 8259), then ``json.loads``; RecursionError, MemoryError and ValueError all
   become BodyError.

So whatever it holds, a body costs at most 10 times its size plus 256 KiB to parse: at most
about 40 MiB for an ``/endpoints`` answer, against 845 MB before.

Every refusal is a BodyError saying what was wrong; the client adds which request.

A version (``/version``'s ``latest``, ``2024103100``) is shown, logged, kept and written into
the PAC export: it must be ``version_ok``, a short run of letters, digits, ``.``, ``_`` and
``-``, never text that could end a line or a comment.
"""

from __future__ import annotations

import json
import re

MAX_DEPTH = 16
COST_FACTOR = 10
COST_SLACK = 256 * 1024  # what a small body may cost whatever its shape

# What json.loads allocates at most (CPython 3.11, 64-bit, as tracemalloc counts it, rounded
# up; tests/unit/test_endpoint_body.py holds the sum against measurements of many shapes):
_BASE = 8192  # the scanner, its key memo, a small body's rounding
_STR = {1: 56, 2: 80, 4: 88}  # a str object, by character width, without its characters
_DICT = 192  # a dict and its first key table (5 keys)
_ENTRY = 112  # a key: its slot in a dict that grows (the old table alive meanwhile) and the memo
_LIST = 96  # a list and its first item array (4 items)
_SLOT = 18  # one more item in a list: a pointer, grown by an eighth, the old array alive
_NUMBER = 40  # an int up to 2**60 or a float; longer ints are paid for by their digits

_WHITESPACE = b" \t\r\n"
# Every digit and '-' read as '0', so that a number's start is one of three short patterns.
_NUMBER_START = bytes.maketrans(b"-123456789", b"0" * 10)
_ASTRAL_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")  # UTF-8 of U+10000 and above
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")  # \ud83d...: a character above U+FFFF
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))

_VERSION = re.compile(r"[0-9A-Za-z._-]{1,64}")


def version_ok(text: str) -> bool:
    """Whether `text` may be a version of the endpoint data (see the module docstring)."""
    return _VERSION.fullmatch(text) is not None


class BodyError(ValueError):
    """The body is too large, too costly or too deep to parse, or not JSON."""


def parse(body: bytes, limit: int) -> object:
    """The JSON value of ``body``, or BodyError if it is not allowed or not JSON."""
    if len(body) > limit:
        raise BodyError(f"larger than {limit} bytes")
    body = body.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, which JSON ignores
    compact = body.translate(_NUMBER_START, _WHITESPACE)
    price = cost(body, compact)
    if price > COST_FACTOR * len(body) + COST_SLACK:
        raise BodyError(
            f"{len(body)} bytes that would take about {price} bytes of memory to parse, "
            f"more than {COST_FACTOR} times their size: refused unparsed"
        )
    if too_deep(compact, MAX_DEPTH):
        raise BodyError(f"nested deeper than {MAX_DEPTH} levels: refused unparsed")
    del compact
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"not UTF-8: {exc}") from None
    try:
        return json.loads(text)
    except RecursionError:  # too_deep stops this; kept in case of a bug there
        raise BodyError("nested too deeply to parse") from None
    except MemoryError:
        raise BodyError("out of memory while parsing it") from None
    except ValueError as exc:
        raise BodyError(f"not JSON: {exc}") from None


def cost(body: bytes, compact: bytes) -> int:
    """An upper bound of the bytes ``json.loads(body.decode())`` allocates; ``compact`` is
    ``body`` without whitespace and with every digit and '-' made '0'."""
    size = len(body)
    if body.isascii():
        text_width = 1
    elif any(lead in body for lead in _ASTRAL_LEADS):
        text_width = 4
    else:
        text_width = 2
    escape_width = 1
    if b"\\u" in body:
        escape_width = 4 if _SURROGATE_ESCAPE.search(body) else 2
    width = max(text_width, escape_width)
    quotes = compact.count(b'"')
    numbers = compact.count(b"[0") + compact.count(b",0") + compact.count(b'":0') + 1
    characters = width * (size - quotes)  # every string's, at most: a byte of the body each
    if b"\\" in body:  # a string with escapes is built in a buffer a quarter too large
        characters += characters + characters // 4  # (the longest is at most all of them)
    return (
        _BASE
        + text_width * size  # the decoded text, alive while it is parsed
        + characters
        + _STR[width] * (quotes // 2 + 1)
        + _DICT * compact.count(b"{")
        + _ENTRY * compact.count(b'":')
        + _LIST * compact.count(b"[")
        + _SLOT * compact.count(b",")
        + _NUMBER * numbers
    )


def too_deep(compact: bytes, limit: int) -> bool:
    """Whether the JSON text ``compact`` nests arrays and objects deeper than ``limit``,
    brackets inside strings not counted. C-level passes over copies no larger than the text."""
    # Escaped backslashes, then escaped quotes: what is left of a string is "...".
    text = compact.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Only " [ ] are left. Two quotes in a row (an empty string, or the end of one string and
    # the start of the next) go: every other byte stays inside or outside a string as it was.
    text = text.translate(_BRACKETS, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in text:  # strings with brackets in them: rare, and paid for by the price
        text = _outside_strings(text)
    for _ in range(limit):
        if b"[]" not in text:
            break
        text = text.replace(b"[]", b"")  # the innermost pairs: one level per pass
    # Pairs left after ``limit`` passes, or more than ``limit`` brackets never closed.
    return b"[]" in text or text.count(b"[") > limit


def _outside_strings(text: bytes) -> bytes:
    """``text`` without its strings (no escapes left in them), quotes included."""
    view, out, start = memoryview(text), bytearray(), 0
    while (opening := text.find(b'"', start)) >= 0:
        out += view[start:opening]
        closing = text.find(b'"', opening + 1)
        start = len(text) if closing < 0 else closing + 1
    out += view[start:]
    return bytes(out)
