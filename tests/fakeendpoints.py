"""A fake Microsoft 365 endpoint web service for the tests: a trimmed answer, a full-size one
and a handler.

It serves plain http:// (no certificate on 127.0.0.1), which resolverd refuses unless told:
clients pass ``allow_http=True``, configs ``allow_http: true``."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

# Shaped like https://endpoints.office.com/endpoints/Worldwide (trimmed).
SAMPLE: list[dict[str, Any]] = [
    {
        "id": 1,
        "serviceArea": "Exchange",
        "serviceAreaDisplayName": "Exchange Online",
        "urls": ["outlook.office.com", "outlook.office365.com"],
        "ips": ["13.107.6.152/31", "2603:1006::/40"],
        "tcpPorts": "80,443",
        "expressRoute": True,
        "category": "Optimize",
        "required": True,
    },
    {
        "id": 11,
        "serviceArea": "Skype",
        "serviceAreaDisplayName": "Skype for Business Online and Microsoft Teams",
        "ips": ["13.107.64.0/18", "52.112.0.0/14"],
        "udpPorts": "3478,3479,3480,3481",
        "expressRoute": True,
        "category": "Optimize",
        "required": True,
    },
    {
        "id": 31,
        "serviceArea": "SharePoint",
        "serviceAreaDisplayName": "SharePoint Online and OneDrive for Business",
        "urls": [
            "<tenant>.sharepoint.com",
            "<tenant>-my.sharepoint.com",
            "<tenant>-files.sharepoint.com",
            "*.SharePoint.com.",
        ],
        "ips": ["13.107.136.0/22", "10.0.0.1/8"],
        "tcpPorts": "80,443",
        "udpPorts": "3478-3481,0",
        "expressRoute": True,
        "category": "Optimize",
        "required": True,
        "notes": "Hybrid search",
    },
    {
        "id": 46,
        "serviceArea": "Common",
        "urls": ["*.msftidentity.com", "login.microsoftonline.com"],
        "tcpPorts": "443",
        "expressRoute": False,
        "category": "Allow",
        "required": False,
    },
    {
        "id": 95,
        "serviceArea": "Common",
        "serviceAreaDisplayName": "Microsoft 365 Common and Office Online",
        "urls": ["*.office.com"],
        "tcpPorts": "443",
        "expressRoute": False,
        "category": "Default",
        "required": False,
    },
]


def realistic_endpoints(sets: int = 90, seed: int = 1) -> list[dict[str, Any]]:
    """Endpoint sets shaped and sized like the real Worldwide answer (about 70 KB as compact
    JSON): names and prefixes like Microsoft's, some notes, ids in steps of two."""
    rng = random.Random(seed)
    domains = ("office.com", "office365.com", "microsoftonline.com", "sharepoint.com", "lync.com")
    out: list[dict[str, Any]] = []
    for index in range(sets):
        area = rng.choice(("Exchange", "SharePoint", "Skype", "Common"))
        entry: dict[str, Any] = {
            "id": 2 * index + 1,
            "serviceArea": area,
            "serviceAreaDisplayName": f"{area} Online and Microsoft Teams",
            "tcpPorts": "80,443",
            "expressRoute": rng.random() < 0.5,
            "category": rng.choice(("Optimize", "Allow", "Default")),
            "required": rng.random() < 0.6,
        }
        if urls := rng.choice((0, 1, 2, 3, 5, 8, 20, 40)):
            entry["urls"] = [
                f"{'*.' if rng.random() < 0.4 else ''}{rng.choice(('outlook', 'login', 'res'))}"
                f"{n}.{rng.choice(domains)}"
                for n in range(urls)
            ]
        if ips := rng.choice((0, 0, 2, 6, 20, 60)):
            entry["ips"] = [_prefix(rng) for _ in range(ips)]
        if rng.random() < 0.2:
            entry["udpPorts"] = "3478,3479,3480,3481"
        if rng.random() < 0.3:
            entry["notes"] = "Required for some features: " + "x" * rng.randrange(20, 200)
        out.append(entry)
    return out


def _prefix(rng: random.Random) -> str:
    if rng.random() < 0.5:
        length = rng.choice((16, 18, 22, 23, 24))
        address = rng.randrange(13 << 24, 220 << 24)
        return str(ipaddress.ip_network((address, length), strict=False))
    length = rng.choice((36, 40, 48))
    return str(
        ipaddress.ip_network(
            ((0x2603 << 112) + (rng.randrange(1 << 24) << 88), length), strict=False
        )
    )


class FakeService(http.server.BaseHTTPRequestHandler):
    """Answers /version/<instance> and /endpoints/<instance>; other paths are 404.

    Class attributes steer it: ``status`` for every answer, ``status_for`` by path (e.g.
    ``{"/endpoints/Worldwide": 429}``), ``extra_headers`` added to every answer (``Retry-After``),
    ``body_override`` for every body and ``body_for`` by path, ``redirect_to`` (a 302 to it,
    for every path), ``drip`` (seconds between the body's bytes, sent one at a time).
    ``reset()`` puts them all back."""

    requests: list[str] = []
    body_override: bytes | None = None
    body_for: dict[str, bytes] = {}
    redirect_to: str | None = None
    status = 200
    status_for: dict[str, int] = {}
    extra_headers: dict[str, str] = {}
    delay = 0.0
    drip = 0.0
    version = "2024103100"

    @classmethod
    def reset(cls) -> None:
        cls.requests = []
        cls.body_override = None
        cls.body_for = {}
        cls.redirect_to = None
        cls.status = 200
        cls.status_for = {}
        cls.extra_headers = {}
        cls.delay = 0.0
        cls.drip = 0.0
        cls.version = "2024103100"

    def do_GET(self) -> None:
        # The list of this request's test: a slow answer may end after the next test's reset.
        requests = type(self).requests
        requests.append(self.path)
        time.sleep(self.delay)
        url = urllib.parse.urlsplit(self.path)
        if self.redirect_to is not None:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if url.path == "/version/Worldwide":
            body = json.dumps({"instance": "Worldwide", "latest": self.version}).encode()
        elif url.path == "/endpoints/Worldwide":
            body = json.dumps(SAMPLE).encode()
        else:
            self.send_error(404, "no such instance")
            return
        if self.body_override is not None:
            body = self.body_override
        body = self.body_for.get(url.path, body)
        try:
            self.send_response(self.status_for.get(url.path, self.status))
            for name, value in self.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not self.drip:
                self.wfile.write(body)
            for index in range(len(body) if self.drip else 0):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                time.sleep(self.drip)
        except (BrokenPipeError, ConnectionResetError):
            requests.append("client went away")  # the timeout test hangs up early

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep test output quiet


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """FakeService on 127.0.0.1 in a thread, reset before and after; yields its base URL."""
    FakeService.reset()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        FakeService.reset()
