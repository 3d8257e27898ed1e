"""The Microsoft 365 endpoint web service feed: version polling, 429/Retry-After, the last
good copy on disk.

Microsoft asks clients to check ``/version`` about once an hour and to call ``/endpoints`` only
when the version changed; ``/endpoints`` is limited per client and answers HTTP 429 beyond the
limit. So resolverd

- checks the version at start, every ``policy.endpoints.poll_interval`` seconds, after a reload
  that changes ``policy.endpoints``, and on ``resolverctl policy update``;
- downloads the endpoint sets only when the version, the instance or the tenant changed, with
  ``TenantName`` when ``policy.tenant`` is set;
- verifies the download, has the daemon put it in force, and only then keeps it in
  ``state_dir/endpoints.json`` (``resolver.endpointcache``): a failed update changes nothing;
- after a 429 sends no request at all, ``/version`` included, before the time its Retry-After
  gives (delay-seconds or an HTTP date; one hour when it is missing or not understood; at most
  a day), not even for ``resolverctl policy update``, which fails saying until when. The
  deadline is kept in ``state_dir/endpoints-retry-after`` (ISO 8601 UTC) so a restart honours
  it too; read back, it is a day away at most too, and a value that cannot be read is ignored.

The client request id (a GUID the service wants stable per client) is kept in
``state_dir/endpoints-client-id``.

The HTTP client (``resolver.endpointclient``, loaded at the first check) takes ``https://``
only unless ``policy.endpoints.allow_http`` is true, and bounds each answer's time, size, parse
cost and depth (``resolver.endpointbody``); ``policy.endpoints`` skips names and prefixes
broader than a registrable domain, a /10 (IPv4) or a /32 (IPv6). Whatever goes wrong, a check
ends in ``last_error`` and the next one comes on time: an error nobody foresaw (a bug) is
logged with its traceback (in one line while the same error repeats) and shown there too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from policy.endpoints import policy_from_endpoints_json
from policy.loader import PolicyError
from resolver.config import EndpointsConfig, PolicyConfig
from resolver.control.protocol import UpdateFailed
from resolver.endpointcache import (
    EndpointSets,
    commit_cache,
    discard_staged_cache,
    stage_cache,
    verified_cache,
    write_atomically,
)
from resolver.endpointerrors import (
    RETRY_AFTER_MAX,
    Clock,
    EndpointsError,
    RateLimited,
    new_client_request_id,
    utc_iso,
)

log = logging.getLogger("resolverd.policy")

CLIENT_ID_FILE = "endpoints-client-id"
RETRY_FILE = "endpoints-retry-after"

Apply = Callable[[EndpointSets], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Checked:
    """The outcome of one version check: the service's version, and new sets if it changed."""

    version: str
    sets: EndpointSets | None


class EndpointFeed:
    """The daemon's side of the service: when to ask, what came back, what is kept.

    ``update`` is the one way in (the poll loop and ``policy update`` both use it); one update
    runs at a time. ``status`` gives ``last_check``, ``last_error`` and ``next_check``."""

    def __init__(self, state_dir: str, clock: Clock = time.time, timeout: float = 30.0) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.timeout = timeout
        self.last_check: float | None = None  # wall clock, when the last version check began
        self.last_error: str | None = None
        self.retry_at: float | None = self._read_retry_at()
        self._lock = asyncio.Lock()

    # -- schedule --------------------------------------------------------------------------
    def rate_limited(self) -> bool:
        """Whether a 429's Retry-After still forbids any request."""
        return self.retry_at is not None and self.clock() < self.retry_at

    def next_check(self, cfg: EndpointsConfig | None) -> float | None:
        """When the next version check is due (None: endpoints not configured): a poll
        interval after the last one (now if none yet), and never before a 429's deadline."""
        if cfg is None:
            return None
        due = self.clock() if self.last_check is None else self.last_check + cfg.poll_interval
        return due if self.retry_at is None else max(due, self.retry_at)

    def seconds_to_next_check(self, cfg: EndpointsConfig | None) -> float | None:
        due = self.next_check(cfg)
        return None if due is None else max(0.0, due - self.clock())

    def status(self, cfg: EndpointsConfig | None) -> dict[str, Any]:
        """``last_check`` and ``next_check`` as ISO 8601 UTC (or null), ``last_error``."""
        due = self.next_check(cfg)
        return {
            "last_check": None if self.last_check is None else utc_iso(self.last_check),
            "last_error": self.last_error,
            "next_check": None if due is None else utc_iso(due),
        }

    # -- update ----------------------------------------------------------------------------
    async def update(self, cfg: PolicyConfig, apply: Apply) -> dict[str, Any]:
        """Check the version now; download, ``apply`` and keep new sets if it changed.

        Returns ``{"changed", "version"}``; raises UpdateFailed (the message is kept as
        ``last_error``). Refused without a request while a 429's Retry-After runs."""
        if cfg.endpoints is None:
            raise UpdateFailed("policy.endpoints is not configured")
        async with self._lock:
            if self.rate_limited():
                assert self.retry_at is not None
                raise UpdateFailed(
                    "the endpoint web service answered HTTP 429 (too many requests): "
                    f"no request to it before {utc_iso(self.retry_at)}"
                )
            self.last_check = self.clock()
            try:
                return await self._update(cfg, apply)
            except UpdateFailed:
                raise
            except Exception as err:  # noqa: BLE001 - a bug: logged, shown, checked again
                await asyncio.to_thread(self._discard)  # whatever was staged is not in force
                raise UpdateFailed(self.unexpected(err)) from None

    async def _update(self, cfg: PolicyConfig, apply: Apply) -> dict[str, Any]:
        try:
            checked = await asyncio.to_thread(self.check, cfg)
        except RateLimited as err:
            self.retry_at = err.until
            raise self._failed(f"endpoint web service: {err}") from None
        except (EndpointsError, OSError) as err:
            raise self._failed(f"endpoint web service: {err}") from None
        except PolicyError as err:
            raise self._failed("endpoint web service: " + "; ".join(err.errors)) from None
        self.retry_at = None
        if checked.sets is not None:
            try:
                await apply(checked.sets)
            except UpdateFailed as err:
                await asyncio.to_thread(self._discard)
                raise self._failed(err.message) from None
            try:
                commit_cache(self.state_dir)  # no await since apply: a reload sees it
            except OSError as err:
                raise self._failed(
                    f"the new endpoint sets are in force but could not be kept: {err}"
                ) from None
        self.last_error = None
        return {"changed": checked.sets is not None, "version": checked.version}

    def check(self, cfg: PolicyConfig) -> Checked:
        """The version check and, if needed, the download, verified and staged beside the
        cache (blocking: run it in a thread). A 429's deadline is kept in state_dir.

        Raises EndpointsError (RateLimited for a 429), PolicyError for unusable sets, OSError
        for the files in state_dir."""
        endpoints = cfg.endpoints
        assert endpoints is not None
        # Here, not at the top: its urllib, http.client and email cost 3 MiB of RSS, which a
        # daemon without policy.endpoints (the default) never needs.
        from resolver.endpointclient import EndpointsClient

        client = EndpointsClient(
            endpoints.url,
            endpoints.instance,
            self._client_id(),
            self.timeout,
            tenant=cfg.tenant,
            clock=self.clock,
            allow_http=endpoints.allow_http,
        )
        try:
            version = client.fetch_version()
        except RateLimited as err:
            self._keep_deadline(err.until)
            raise
        self._keep_deadline(None)
        kept = self._kept(cfg)
        if kept is not None and (kept.version, kept.instance, kept.tenant) == (
            version,
            endpoints.instance,
            cfg.tenant,
        ):
            return Checked(version, None)
        try:
            answer = client.fetch_endpoints()
        except RateLimited as err:
            self._keep_deadline(err.until)
            raise
        sets = EndpointSets(endpoints.instance, version, answer, cfg.tenant)
        policy_from_endpoints_json(  # verify before anything uses it; warnings come at merge
            sets.endpoints, version, endpoints.categories, tenant=cfg.tenant, warnings=[]
        )
        stage_cache(self.state_dir, sets)
        return Checked(version, sets)

    def _failed(self, message: str) -> UpdateFailed:
        self.last_error = message
        return UpdateFailed(message)

    def unexpected(self, err: Exception, counts_as_check: bool = False) -> str:
        """An error nobody foresaw (a bug), kept as ``last_error`` and returned; logged with
        its traceback, and while the same error repeats, in one line. ``counts_as_check``:
        it happened outside ``update``, and the next check is still a poll interval away."""
        message = f"endpoint web service: unexpected error: {type(err).__name__}: {err}"
        if message == self.last_error:
            log.error("%s (again)", message)
        else:
            log.error("%s", message, exc_info=err)
        self.last_error = message
        if counts_as_check:
            self.last_check = self.clock()
        return message

    def _kept(self, cfg: PolicyConfig) -> EndpointSets | None:
        """The kept sets; kept sets that cannot be used (``verified_cache``) count as none, so
        the download replaces them. Why was logged when the policy was built without them
        (``effective_policy``, at start or reload): here it is only a debug line."""
        try:
            return verified_cache(self.state_dir, cfg)
        except PolicyError as err:
            log.debug("%s; downloading the endpoint sets again", err.errors[0])
            return None

    # -- files in state_dir ----------------------------------------------------------------
    def _client_id(self) -> str:
        path = os.path.join(self.state_dir, CLIENT_ID_FILE)
        try:
            with open(path, encoding="ascii") as fh:
                client_id = fh.read().strip()
        except FileNotFoundError:
            client_id = ""
        if not client_id:
            client_id = new_client_request_id()
            write_atomically(path, client_id + "\n")
        return client_id

    def _read_retry_at(self) -> float | None:
        """The deadline a 429 left (``_keep_deadline``): ISO 8601, UTC when it gives no offset.
        One further away than RETRY_AFTER_MAX (a clock set back, a file not written by us) is
        cut to that, and kept so; one that cannot be read is ignored. Both are logged."""
        path = os.path.join(self.state_dir, RETRY_FILE)
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
            when = datetime.fromisoformat(text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("%s: unusable, ignored: %s", path, err)
            return None
        if when.tzinfo is None:  # no offset: UTC, in which _keep_deadline writes it
            when = when.replace(tzinfo=UTC)
        until = when.timestamp()
        latest = float(math.ceil(self.clock() + RETRY_AFTER_MAX))
        if until <= latest:
            return until
        log.warning(
            "%s: %s is more than %d s away: cut to %s", path, text, RETRY_AFTER_MAX, utc_iso(latest)
        )
        self._keep_deadline(latest)
        return latest

    def _keep_deadline(self, until: float | None) -> None:
        """Keep a 429's deadline in state_dir for a restart (None: remove it)."""
        path = os.path.join(self.state_dir, RETRY_FILE)
        try:
            if until is not None:
                write_atomically(path, utc_iso(until) + "\n")
            elif os.path.exists(path):
                os.unlink(path)
        except OSError as err:
            log.warning("%s: cannot be updated: %s", path, err)

    def _discard(self) -> None:
        try:
            discard_staged_cache(self.state_dir)
        except OSError as err:
            log.warning("endpoint sets not put in force could not be removed: %s", err)
