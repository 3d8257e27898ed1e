"""What `resolverctl routes` gets: the rows, and the same rows encoded directly as JSON."""

from __future__ import annotations

import json

import pytest

from resolver.control.protocol import RawJSON, encode_ok, parse_response, raw_result
from resolver.net import report
from resolver.net.holds import Hold

pytestmark = pytest.mark.unit


def holds() -> list[Hold]:
    out = []
    for i in range(300):
        packed = (
            bytes([203, 0, 113, i])
            if i < 250
            else bytes.fromhex("20010db8") + bytes(12)[:-1] + bytes([i - 250])
        )
        h = Hold(packed, f"n{i}.office.com", 1000.0 + i, i % 17)
        h.installed = i % 3 != 0
        out.append(h)
    out[5].extend("alias.corp.example", 3, 1200.0)
    out[6].names = 'we"ird\\name.example'  # escaped by the JSON writer, never spliced raw
    return out


def test_routes_json_is_the_same_list_as_routes() -> None:
    rows = report.routes(holds(), 900.0)
    assert json.loads(report.routes_json(holds(), 900.0)) == rows
    assert rows[0]["address"] == "203.0.113.0" and rows[-1]["family"] == 6
    assert rows[5]["names"] == ["alias.corp.example", "n5.office.com"]


def test_a_raw_result_goes_through_the_protocol_unparsed() -> None:
    raw = RawJSON(report.routes_json(holds(), 900.0))
    line = encode_ok(raw)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert raw_result(line[:-1]) == raw
    assert parse_response(line[:-1]) == json.loads(raw)
    assert raw_result(encode_ok({"a": 1})[:-1]) == b'{"a":1}'
    assert raw_result(b'{"version":1,"ok":false,"error":{"name":"X","message":"y"}}') is None
