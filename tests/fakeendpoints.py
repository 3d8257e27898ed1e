"""A fake Microsoft 365 endpoint web service for the tests: a trimmed answer and a handler."""

from __future__ import annotations

import http.server
import json
import time
import urllib.parse
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
        "urls": ["<tenant>.sharepoint.com", "<tenant>-my.sharepoint.com", "*.SharePoint.com."],
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
    """Answers /version/<instance> and /endpoints/<instance>; other paths are 404."""

    requests: list[str] = []
    body_override: bytes | None = None
    status = 200
    delay = 0.0
    version = "2024103100"

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
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
            self.send_response(self.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            type(self).requests.append("client went away")  # the timeout test hangs up early

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep test output quiet
