"""The Microsoft 365 endpoint web service (https://endpoints.office.com): JSON -> Policy.

``EndpointsClient`` asks the service for its latest version and for the endpoint sets, using only
the standard library. ``policy_from_endpoints_json`` turns the endpoint sets into rules: one rule
per set, ``row`` being the set's id and ``category`` its Optimize, Allow or Default.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Collection

from policy.loader import PolicyError, normalise_cidr, normalise_pattern, normalise_port
from policy.model import Policy, Rule

DEFAULT_URL = "https://endpoints.office.com"
MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_REQUIRED_KEYS = ("id", "serviceArea", "category", "required", "expressRoute")


class EndpointsError(Exception):
    """The endpoint service could not be reached or sent something unusable."""


def new_client_request_id() -> str:
    """A fresh client request id (the service wants a GUID, kept across runs)."""
    return str(uuid.uuid4())


def _rule(entry: dict[str, object], row: int, where: str, warnings: list[str]) -> Rule:
    """One endpoint set as a rule; names, prefixes and ports that do not parse become warnings."""
    patterns: dict[str, None] = {}
    for index, url in enumerate(_string_list(entry, "urls", where)):
        try:
            patterns.setdefault(normalise_pattern(url), None)
        except ValueError as exc:
            warnings.append(f"{where}/urls/{index}: {url!r}: {exc}; skipped")
    cidrs: dict[str, None] = {}
    for index, ip in enumerate(_string_list(entry, "ips", where)):
        try:
            cidrs.setdefault(normalise_cidr(ip), None)
        except ValueError as exc:
            warnings.append(f"{where}/ips/{index}: {ip!r}: {exc}; skipped")
    ports: dict[str, None] = {}
    for key, proto in (("tcpPorts", "tcp"), ("udpPorts", "udp")):
        text = entry.get(key, "")
        if not isinstance(text, str):
            raise ValueError(f"{where}/{key}: expected a string such as '80,443', got {text!r}")
        for part in text.split(","):
            if not part.strip():
                continue
            try:
                ports.setdefault(normalise_port(f"{proto}/{part.strip()}"), None)
            except ValueError as exc:
                warnings.append(f"{where}/{key}: {part.strip()!r}: {exc}; skipped")
    notes = entry.get("notes", "")
    return Rule(
        row=row,
        purpose=str(entry.get("serviceAreaDisplayName") or entry["serviceArea"]),
        required=entry["required"] is True,
        patterns=tuple(patterns),
        cidrs=tuple(cidrs),
        ports=tuple(ports),
        expressroute=entry["expressRoute"] is True,
        category=str(entry["category"]),
        notes=notes if isinstance(notes, str) else "",
    )


def _string_list(entry: dict[str, object], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}/{key}: expected a list of strings")
    return value


def _check(entry: dict[str, object], where: str) -> list[str]:
    """The structural problems of one endpoint set (missing keys, wrong types)."""
    errors = [f"{where}: missing key {key!r}" for key in _REQUIRED_KEYS if key not in entry]
    for key in ("required", "expressRoute"):
        if key in entry and not isinstance(entry[key], bool):
            errors.append(f"{where}/{key}: expected true or false, got {entry[key]!r}")
    for key in ("serviceArea", "category"):
        if key in entry and not isinstance(entry[key], str):
            errors.append(f"{where}/{key}: expected a string, got {entry[key]!r}")
    return errors


def policy_from_endpoints_json(
    data: object,
    version: str,
    categories: Collection[str],
    *,
    source: str = "endpoints",
    warnings: list[str] | None = None,
) -> Policy:
    """A policy from the service's endpoint sets whose category is in ``categories``.

    Structural problems (not a list, missing keys, wrong types, repeated ids) raise PolicyError
    listing all of them, each as ``<source>: /<index>/<key>: ...``. A name, prefix or port that
    does not parse is skipped with a message appended to ``warnings``: the service lists names
    such as ``<tenant>-my.sharepoint.com`` that no label wildcard can express.
    """
    if warnings is None:
        warnings = []
    if not isinstance(data, list):
        raise PolicyError([f"{source}: /: expected a list of endpoint sets"])
    errors: list[str] = []
    rules: list[Rule] = []
    seen: set[int] = set()
    for index, entry in enumerate(data):
        where = f"{source}: /{index}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected an object, got {type(entry).__name__}")
            continue
        problems = _check(entry, where)
        set_id = entry.get("id")
        if "id" in entry and not _is_positive_int(set_id):
            problems.append(f"{where}/id: expected a positive integer, got {set_id!r}")
        elif set_id in seen:
            problems.append(f"{where}/id: duplicate id {set_id}")
        if problems or not isinstance(set_id, int):
            errors.extend(problems)
            continue
        seen.add(set_id)
        if entry["category"] not in categories:
            continue
        try:
            rules.append(_rule(entry, set_id, where, warnings))
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise PolicyError(errors)
    return Policy(rules=tuple(rules), source=source, version=version)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class EndpointsClient:
    """A small client for the endpoint web service: version check and endpoint download."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        instance: str = "Worldwide",
        client_request_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise EndpointsError(f"endpoint service URL {url!r}: expected http:// or https://")
        self.url = url.rstrip("/")
        self.instance = instance
        self.client_request_id = client_request_id or new_client_request_id()
        self.timeout = timeout

    def _address(self, kind: str) -> str:
        instance = urllib.parse.quote(self.instance, safe="")
        query = urllib.parse.urlencode({"clientrequestid": self.client_request_id})
        return f"{self.url}/{kind}/{instance}?{query}"

    def _get_json(self, kind: str) -> object:
        address = self._address(kind)
        request = urllib.request.Request(
            address, headers={"Accept": "application/json", "User-Agent": "resolverd"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise EndpointsError(f"GET {address}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise EndpointsError(f"GET {address}: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise EndpointsError(f"GET {address}: {str(exc) or type(exc).__name__}") from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise EndpointsError(f"GET {address}: response larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise EndpointsError(f"GET {address}: not JSON: {exc}") from None

    def fetch_version(self) -> str:
        """The latest version of the instance's endpoint data, e.g. ``"2024103100"``."""
        data = self._get_json("version")
        latest = data.get("latest") if isinstance(data, dict) else None
        if not isinstance(latest, str) or not latest:
            raise EndpointsError(f"version/{self.instance}: no 'latest' version in {data!r:.200}")
        return latest

    def fetch_endpoints(self) -> list[dict[str, object]]:
        """The instance's endpoint sets, as the service sends them."""
        data = self._get_json("endpoints")
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise EndpointsError(f"endpoints/{self.instance}: expected a list of objects")
        return data
