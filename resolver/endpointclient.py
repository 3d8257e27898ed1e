"""The Microsoft 365 endpoint web service's HTTP client: ``/version`` and ``/endpoints``.

Blocking (``resolver.feed`` runs it in a thread). It trusts what it is sent no further than it
must:

- the URL must be ``https://``: plain ``http://``, which anybody on the way can forge, only with
  ``allow_http`` (``policy.endpoints.allow_http: true``, for a mirror you trust); a redirect
  to anything else is refused too;
- an answer must arrive whole within ``ANSWER_DEADLINE`` timeouts (each read waits one timeout
  at most, so a body sent a byte at a time cannot hold the feed for ever);
- a body is at most ``BODY_LIMITS`` bytes (64 KiB for ``/version``, whose answer is a few dozen
  bytes; 4 MiB for ``/endpoints``, whose answer is about 100 KB), and it is priced and
  depth-checked before it is parsed (``resolver.endpointbody``);
- HTTP 429 raises RateLimited with the time its Retry-After gives.

Every failure is an EndpointsError (resolver.endpointerrors) that names the request.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC
from typing import Any

from resolver import endpointbody
from resolver.endpointerrors import (
    RETRY_AFTER_MAX,
    Clock,
    EndpointsError,
    RateLimited,
    new_client_request_id,
    utc_iso,
)

log = logging.getLogger("resolverd.policy")

DEFAULT_URL = "https://endpoints.office.com"
BODY_LIMITS = {"version": 64 * 1024, "endpoints": 4 * 1024 * 1024}  # bytes, by request
ANSWER_DEADLINE = 4  # an answer must be whole within this many timeouts
READ_CHUNK = 64 * 1024
RETRY_AFTER_DEFAULT = 3600.0  # a 429 without a usable Retry-After: wait an hour


def retry_after(header: str | None, now: float) -> float:
    """When the next request may go after a 429 with this Retry-After header (RFC 9110 10.2.3:
    delay-seconds or an HTTP date); one hour when missing or not understood, at most a day.
    Rounded up to a whole second, so that the time shown (and kept) is never too early."""
    delay = RETRY_AFTER_DEFAULT
    text = (header or "").strip()
    if text.isascii() and text.isdigit():
        delay = float(text)
    elif text:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            log.warning("endpoint web service: Retry-After %r not understood: one hour", text)
        else:
            if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
                when = when.replace(tzinfo=UTC)
            delay = when.timestamp() - now
    return float(math.ceil(now + min(max(delay, 0.0), RETRY_AFTER_MAX)))


def refused_scheme(url: str, allow_http: bool) -> str | None:
    """Why ``url`` may not be asked, or None: https://, or http:// with ``allow_http``."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and allow_http):
        return None
    if scheme == "http":
        return (
            "plain http:// can be forged on the way: use https://, or set "
            "policy.endpoints.allow_http: true for a mirror you trust"
        )
    return "expected https://"


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to https:// only (and http:// with allow_http)."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        refused = refused_scheme(newurl, self.allow_http)
        if refused is not None:
            reason = f"redirect to {newurl!r} refused: {refused}"
            raise urllib.error.HTTPError(req.full_url, code, reason, headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class EndpointsClient:
    """A small blocking client for the service: version check and endpoint download.

    ``url`` must be https://, or http:// with ``allow_http`` (EndpointsError otherwise)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        instance: str = "Worldwide",
        client_request_id: str | None = None,
        timeout: float = 30.0,
        tenant: str | None = None,
        clock: Clock = time.time,
        allow_http: bool = False,
    ) -> None:
        refused = refused_scheme(url, allow_http)
        if refused is not None:
            raise EndpointsError(f"endpoint service URL {url!r}: {refused}")
        self.url = url.rstrip("/")
        self.instance = instance
        self.client_request_id = client_request_id or new_client_request_id()
        self.timeout = timeout
        self.tenant = tenant
        self.clock = clock
        self._opener = urllib.request.build_opener(_Redirects(allow_http))

    def _address(self, kind: str, params: dict[str, str]) -> str:
        instance = urllib.parse.quote(self.instance, safe="")
        query = urllib.parse.urlencode({"clientrequestid": self.client_request_id, **params})
        return f"{self.url}/{kind}/{instance}?{query}"

    def _get_json(self, kind: str, params: dict[str, str] | None = None) -> object:
        address = self._address(kind, params or {})
        request = urllib.request.Request(
            address, headers={"Accept": "application/json", "User-Agent": "resolverd"}
        )
        limit = BODY_LIMITS[kind]
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = self._read(response, limit, address)
        except urllib.error.HTTPError as exc:
            exc.close()  # its body is not read: the connection goes
            if exc.code == 429:
                header = exc.headers.get("Retry-After") if exc.headers is not None else None
                until = retry_after(header, self.clock())
                given = f"Retry-After: {header}" if header else "no Retry-After"
                raise RateLimited(
                    f"GET {address}: HTTP 429 {exc.reason} ({given}): "
                    f"no request before {utc_iso(until)}",
                    until,
                ) from None
            raise EndpointsError(f"GET {address}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise EndpointsError(f"GET {address}: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise EndpointsError(f"GET {address}: {str(exc) or type(exc).__name__}") from None
        try:
            return endpointbody.parse(body, limit)
        except endpointbody.BodyError as exc:
            raise EndpointsError(f"GET {address}: {exc}") from None

    def _read(self, response: http.client.HTTPResponse, limit: int, address: str) -> bytes:
        """At most ``limit`` + 1 bytes of the body, all within ANSWER_DEADLINE timeouts
        (each read waits one at most): a body dripped a byte at a time cannot hold the feed."""
        longest = ANSWER_DEADLINE * self.timeout
        deadline = time.monotonic() + longest
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = response.read1(min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise EndpointsError(f"GET {address}: the answer took longer than {longest:g} s")
        return b"".join(chunks)

    def fetch_version(self) -> str:
        """The latest version of the instance's endpoint data, e.g. ``"2024103100"``."""
        data = self._get_json("version")
        latest = data.get("latest") if isinstance(data, dict) else None
        if not isinstance(latest, str) or not latest:
            raise EndpointsError(f"version/{self.instance}: no 'latest' version in {data!r:.200}")
        if not endpointbody.version_ok(latest):
            raise EndpointsError(f"version/{self.instance}: {latest!r:.80} is no version")
        return latest

    def fetch_endpoints(self) -> list[dict[str, Any]]:
        """The instance's endpoint sets, as the service sends them (for the tenant, if set)."""
        params = {"TenantName": self.tenant} if self.tenant else {}
        data = self._get_json("endpoints", params)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise EndpointsError(f"endpoints/{self.instance}: expected a list of objects")
        return data
