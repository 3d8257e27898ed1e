"""What the endpoint service's client reports, in terms the feed can use without loading it.

The HTTP client (resolver.endpointclient) brings urllib, http.client and email: about 3 MiB
of RSS, which a daemon without ``policy.endpoints`` (the default) should not carry. The feed
(resolver.feed) imports this module at start and the client only when it checks the service.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

RETRY_AFTER_MAX = 86_400.0  # a Retry-After further away than this is cut to a day

Clock = Callable[[], float]


class EndpointsError(Exception):
    """The endpoint service could not be reached or sent something unusable."""


class RateLimited(EndpointsError):
    """HTTP 429: the service wants no request before ``until`` (wall-clock seconds)."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until


def new_client_request_id() -> str:
    """A fresh client request id (the service wants a GUID, kept across runs)."""
    return str(uuid.uuid4())


def utc_iso(when: float) -> str:
    """``2024-11-01T13:00:00Z``: wall-clock seconds as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
