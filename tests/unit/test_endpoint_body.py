"""resolver.endpointbody: what parsing an endpoint service answer may cost, measured with
tracemalloc. A hostile body is refused having cost about its own size; whatever is accepted
costs at most COST_FACTOR times its size (plus COST_SLACK); the price is never below what
json.loads really takes; the real answer's shape still parses, with room to spare."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable

import pytest

from resolver.endpointbody import COST_FACTOR, COST_SLACK, MAX_DEPTH, BodyError, cost, parse
from tests.fakeendpoints import realistic_endpoints

pytestmark = pytest.mark.unit

MIB = 1024 * 1024
UNLIMITED = 1 << 40


def peak_of(call: Callable[[], object]) -> tuple[int, object]:
    """The most memory ``call`` held at once (tracemalloc), and what it returned or raised."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        try:
            result = call()
        except (BodyError, RecursionError, ValueError) as err:  # what json.loads may raise
            result = err
        return tracemalloc.get_traced_memory()[1] - before, result
    finally:
        tracemalloc.stop()


def array(item: bytes, size: int) -> bytes:
    """``[item,item,...]`` of about ``size`` bytes."""
    return b"[" + b",".join([item] * (size // (len(item) + 1))) + b"]"


def nested(levels: int) -> bytes:
    return b'{"latest": ' + b"[" * levels + b"]" * levels + b"}"


def compact(body: bytes) -> bytes:
    return body.translate(bytes.maketrans(b"-123456789", b"0" * 10), b" \t\r\n")


def realistic(**dumps: object) -> bytes:
    return json.dumps(realistic_endpoints(), **dumps).encode()  # type: ignore[arg-type]


# What an attacker playing the service sent, and its relatives: 1 MiB each.
HOSTILE = {
    "objects": array(b"{}", MIB),  # json.loads: 25 times its size
    "arrays": array(b"[]", MIB),  # 22
    "strings": array(b'"ab"', MIB),  # 13
    "numbers": array(b"300", MIB),  # 10
    "one-key objects": array(b'{"a":{}}', MIB),  # 30
    "keys": b"{" + b",".join(b'"%d":0' % n for n in range(MIB // 10)) + b"}",  # 15
    "wide strings": array('"\u2019"'.encode(), MIB),  # 15
    "deep": b"[" * (MIB // 2) + b"]" * (MIB // 2),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_bodies_are_refused_having_cost_about_their_size(name: str) -> None:
    body = HOSTILE[name]
    peak, result = peak_of(lambda: parse(body, 4 * MIB))
    assert isinstance(result, BodyError)
    assert f"{len(body)} bytes that would take about " in str(result)
    assert str(result).endswith(f"more than {COST_FACTOR} times their size: refused unparsed")
    assert peak <= 1.1 * len(body)  # one copy without whitespace, for the counts


def test_nesting_past_the_limit_is_refused_unparsed() -> None:
    """The /version answer that ended the poll task: cheap, but past the recursion limit."""
    body = nested(1100)
    peak, result = peak_of(lambda: parse(body, 64 * 1024))
    assert isinstance(result, BodyError)
    assert str(result) == f"nested deeper than {MAX_DEPTH} levels: refused unparsed"
    assert peak <= 4 * len(body)
    assert parse(nested(MAX_DEPTH - 1), 64 * 1024) == {"latest": arrays(MAX_DEPTH - 1)}
    with pytest.raises(BodyError, match="nested deeper than 16 levels"):
        parse(nested(MAX_DEPTH), 64 * 1024)  # 16 arrays in the object: 17 levels


def arrays(levels: int) -> object:
    value: list[object] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b'["' + b"[" * 40 + b'"]', "parsed"),  # brackets in a string are text
        (b'["\\"' + b"[" * 40 + b'"]', "parsed"),  # ... after an escaped quote too
        (b'["\\\\",' + b"[" * 20 + b"]" * 20 + b"]", "too deep"),  # "\\" ends there
        (b'[{"a":' * 8 + b"1" + b"}]" * 8, "parsed"),  # 16 levels
        (b'[{"a":' * 8 + b"[]" + b"}]" * 8, "too deep"),  # 17
        (b"[" * 17, "too deep"),  # never closed, past the limit
        (b"[" * 16, "not JSON"),  # never closed
        (b"[]]]]", "not JSON"),  # unbalanced
    ],
)
def test_depth_is_counted_outside_strings(body: bytes, outcome: str) -> None:
    try:
        assert parse(body, 64 * 1024) == json.loads(body)
        found = "parsed"
    except BodyError as err:
        found = "too deep" if str(err).startswith("nested deeper than") else str(err)[:8]
    assert found == outcome


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("compact", realistic(separators=(",", ":"))),
        ("json.dumps", realistic()),
        ("indented", realistic(indent=2)),
        (
            "non-ASCII notes",
            realistic(ensure_ascii=False).replace(b"features", "f\u00e9\u2019".encode()),
        ),
        ("escaped slashes", realistic().replace(b"/", b"\\/")),
    ],
)
def test_the_real_answers_shape_parses_with_room_to_spare(name: str, body: bytes) -> None:
    peak, result = peak_of(lambda: parse(body, 4 * MIB))
    assert result == json.loads(body)
    assert peak <= 6 * len(body)  # json.loads itself takes about 4 times its size here
    assert cost(body, compact(body)) <= 0.8 * (COST_FACTOR * len(body) + COST_SLACK)


# Bodies of every shape, hostile or not, 256 KiB each.
SHAPES = {
    **{name: body[: 256 * 1024].rsplit(b",", 1)[0] + b"]" for name, body in HOSTILE.items()},
    "keys": b"{" + b",".join(b'"%x":0' % n for n in range(256 * 1024 // 9)) + b"}",
    "a big object": b"{" + b",".join(b'"%x":[]' % n for n in range(21846)) + b"}",
    "small objects": array(b'{"a":0,"b":0,"c":0,"d":0,"e":0,"f":0}', 256 * 1024),
    "nested arrays": array(b"[[[]]]", 256 * 1024),
    "ones": array(b"1", 256 * 1024),
    "floats": array(b"1e1", 256 * 1024),
    "big ints": array(b"1152921504606846975", 256 * 1024),
    "literals": array(b"true", 256 * 1024),
    "one long string": b'["' + b"x" * (256 * 1024) + b'"]',
    "one long escaped string": b'["' + b"x" * (256 * 1024) + b'\\n"]',
    "an astral character first": b'["' + "\U0001f600".encode() + b"a" * (256 * 1024) + b'"]',
    "an escaped astral character": b'["\\ud83d\\ude00' + b"a" * (256 * 1024) + b'"]',
    "latin-1": b'["' + "é".encode() * (128 * 1024) + b'"]',
    "escapes": b'["' + b"\\u00e9" * (40 * 1024) + b'"]',
    "long keys": b"{" + b",".join(b'"%s":0' % (b"k%07d" % n * 4) for n in range(7000)) + b"}",
    "the real answer": realistic(separators=(",", ":")),
    "a version answer": b'{"instance": "Worldwide", "latest": "2024103100"}',
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_price_is_never_below_what_json_loads_takes(name: str) -> None:
    body = SHAPES[name]
    json.loads("[{}]")  # warm up: the first call imports and compiles
    peak, _ = peak_of(lambda: json.loads(body.decode()))
    assert peak <= cost(body, compact(body))


@pytest.mark.parametrize("name", list(SHAPES))
def test_no_body_costs_more_than_the_factor(name: str) -> None:
    body = SHAPES[name]
    peak, _ = peak_of(lambda: parse(body, 4 * MIB))
    assert peak <= COST_FACTOR * len(body) + COST_SLACK


def test_other_refusals_say_what_was_wrong() -> None:
    with pytest.raises(BodyError, match=r"^larger than 65536 bytes$"):
        parse(b" " * 65537, 64 * 1024)
    with pytest.raises(BodyError, match=r"^not UTF-8: 'utf-8' codec can't decode byte 0xff"):
        parse(b'["\xff"]', 64 * 1024)
    with pytest.raises(BodyError, match=r"^not JSON: Expecting value: line 1 column 1"):
        parse(b"not json", 64 * 1024)
    with pytest.raises(BodyError, match=r"^not JSON: Exceeds the limit \(4300 digits\)"):
        parse(b"[" + b"1" * 5000 + b"]", 64 * 1024)
    with pytest.raises(BodyError, match=r"^not JSON: Expecting value: line 1 column 1"):
        parse(b"", 64 * 1024)
    assert parse(b'\xef\xbb\xbf{"latest": "1"}', 64 * 1024) == {"latest": "1"}  # a BOM
