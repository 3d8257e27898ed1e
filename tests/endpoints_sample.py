"""A trimmed answer of the Microsoft 365 endpoint web service, shared by the tests."""

from __future__ import annotations

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
