"""A fake Microsoft 365 endpoint web service for the tests: a trimmed answer and a handler."""

from __future__ import annotations

import contextlib
import http.server
import json
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


class FakeService(http.server.BaseHTTPRequestHandler):
    """Answers /version/<instance> and /endpoints/<instance>; other paths are 404.

    Class attributes steer it: ``status`` for every answer, ``status_for`` by path (e.g.
    ``{"/endpoints/Worldwide": 429}``), ``extra_headers`` added to every answer (``Retry-After``).
    ``reset()`` puts them all back."""

    requests: list[str] = []
    body_override: bytes | None = None
    status = 200
    status_for: dict[str, int] = {}
    extra_headers: dict[str, str] = {}
    delay = 0.0
    version = "2024103100"

    @classmethod
    def reset(cls) -> None:
        cls.requests = []
        cls.body_override = None
        cls.status = 200
        cls.status_for = {}
        cls.extra_headers = {}
        cls.delay = 0.0
        cls.version = "2024103100"

    def do_GET(self) -> None:
        # The list of this request's test: a slow answer may end after the next test's reset.
        requests = type(self).requests
        requests.append(self.path)
        time.sleep(self.delay)
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/version/Worldwide":
            body = json.dumps({"instance": "Worldwide", "latest": self.version}).encode()
        elif url.path == "/endpoints/Worldwide":
            body = json.dumps(SAMPLE).encode()
        else:
            self.send_error(404, "no such instance")
            return
        if self.body_override is not None:
            body = self.body_override
        try:
            self.send_response(self.status_for.get(url.path, self.status))
            for name, value in self.extra_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
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
