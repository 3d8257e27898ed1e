"""resolverctl prints nothing raw: a name or message with control characters (escape
sequences that clear the screen or retitle the terminal, BEL, a carriage return that hides
what came before) is written with RFC 1035's \\DDD, in every text form."""

from __future__ import annotations

import json
import re

import pytest

from resolver.control.protocol import error_response
from resolver.ctl import client
from resolver.ctl.main import main
from resolver.ctl.monitor import Table
from resolver.ctl.printable import printable
from resolver.ctl.routes import render_routes
from resolver.ctl.status import render_status

pytestmark = pytest.mark.unit

HOSTILE = "x\x1b[2J\x1b]0;owned\x07\rok\x9b.example"
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # anything but a newline


def test_printable_escapes_control_characters_and_keeps_the_rest() -> None:
    assert printable("outlook.office365.com") == "outlook.office365.com"
    assert printable("a\\032b.example") == "a\\032b.example"  # the daemon's form, as it is
    assert printable(HOSTILE) == "x\\027[2J\\027]0;owned\\007\\013ok\\155.example"
    assert printable("caf\u00e9 \u2028") == "caf\u00e9 \\u+2028"  # printable kept, a separator not


def test_routes_text_escapes_names() -> None:
    out = render_routes(
        [
            {
                "address": "203.0.113.5",
                "family": 4,
                "names": [HOSTILE, "b\x00"],
                "row": 3,
                "hold_s": 60,
            }
        ]
    )
    assert not RAW.search(out)
    assert "x\\027[2J" in out and "b\\000" in out


def test_monitor_text_escapes_names_and_addresses() -> None:
    line = Table().render(
        {
            "time": 0.0,
            "client": "192.0.2.130",
            "name": HOSTILE,
            "type": "A",
            "rcode": "NOERROR",
            "source": "cache",
            "row": 3,
            "via": HOSTILE,
            "pattern": "*.example",
            "addresses": ["203.0.113.5\x07"],
            "installed": [],
            "waited_ms": 0.1,
        }
    )
    assert not RAW.search(line)
    assert "via=x\\027[2J" in line and "203.0.113.5\\007" in line


def test_status_text_escapes_what_the_daemon_sends() -> None:
    out = render_status(
        {"policy": {"source": "builtin", "last_error": "feed said \x1b[31mred"}, "new\x07": "v"}
    )
    assert not RAW.search(out)
    assert "\\027[31mred" in out


def test_an_error_from_the_daemon_is_escaped_too(capsys: pytest.CaptureFixture[str]) -> None:
    def fail(_path: str, _command: str, _args: object, _timeout: float) -> bytes:
        message = "bad \x1b[2J name\nsecond\x07 line"
        return json.dumps(error_response("ReloadFailed", message)).encode()

    code = main(["--socket", "/nonexistent", "reload"], call_line=fail)
    assert code == client.EXIT_ERROR
    err = capsys.readouterr().err
    assert not RAW.search(err)
    assert "bad \\027[2J name" in err and "second\\007 line" in err
