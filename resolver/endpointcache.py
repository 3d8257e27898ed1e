"""The endpoint web service's sets as kept in the state directory, and the policy they give.

``resolver.feed`` fetches the sets and keeps them here (``endpoints.json``, atomically); this
module reads them and merges them into the configured policy. ``effective_policy`` is what
resolverd runs with and what ``resolverctl explain``/``policy export`` show, so this module
does no HTTP and imports nothing that does (resolverctl may not load ssl, urllib or asyncio).

The kept copy is read with a download's bounds: at most ``CACHE_LIMIT`` bytes, priced and
depth-checked before it is parsed (``resolver.endpointbody``), then verified as a download is
(``policy.endpoints``). Kept sets that fail any of this (a file cut short, damaged, too large or
too deep, an id out of range) count as none kept: start, ``--cleanup``, reload and resolverctl
go on without them, saying which file and why, and the next version check downloads them again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from policy.endpoints import policy_from_endpoints_json
from policy.loader import PolicyError, load_policy, merge_policies
from policy.model import Policy
from resolver import endpointbody
from resolver.config import Config, PolicyConfig

log = logging.getLogger("resolverd.policy")

CACHE_FILE = "endpoints.json"
# Twice the largest /endpoints answer taken (4 MiB, resolver.endpointclient), as json.dumps may
# write it a little larger (a space after each separator, \uXXXX for a character beyond ASCII).
CACHE_LIMIT = 8 * 1024 * 1024
SHOWN_ERRORS = 3  # the structural errors of unusable kept sets named in the one line logged


@dataclass(frozen=True, slots=True)
class EndpointSets:
    """One download from the service: the instance and tenant asked for, its version and the
    endpoint sets exactly as the service sent them."""

    instance: str
    version: str
    endpoints: list[Any]
    tenant: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "tenant": self.tenant,
            "version": self.version,
            "endpoints": self.endpoints,
        }


def cache_path(state_dir: str) -> str:
    return os.path.join(state_dir, CACHE_FILE)


def read_cache(state_dir: str) -> EndpointSets | None:
    """The kept download, or None if there is none. PolicyError, one line naming the file, if
    it cannot be read: larger than CACHE_LIMIT, too costly or deep to parse, not JSON, or not
    of the shape ``stage_cache`` writes."""
    path = cache_path(state_dir)
    try:
        with open(path, "rb") as fh:
            body = fh.read(CACHE_LIMIT + 1)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _unusable(path, str(err)) from None
    try:
        data = endpointbody.parse(body, CACHE_LIMIT)
    except endpointbody.BodyError as err:
        raise _unusable(path, str(err)) from None
    if not isinstance(data, dict):
        raise _unusable(path, "expected a JSON object")
    tenant = data.get("tenant")
    endpoints = data.get("endpoints")
    if not isinstance(endpoints, list):
        raise _unusable(path, "/endpoints: expected a list of endpoint sets")
    version = data.get("version", "")
    if not isinstance(version, str) or (version and not endpointbody.version_ok(version)):
        raise _unusable(path, f"/version: {version!r:.80} is no version")
    return EndpointSets(
        instance=str(data.get("instance", "")),
        version=version,
        endpoints=endpoints,
        tenant=tenant if isinstance(tenant, str) else None,
    )


def verified_cache(state_dir: str, cfg: PolicyConfig) -> EndpointSets | None:
    """The kept download (see ``read_cache``), verified as a download is when it is of the
    configured instance: PolicyError, one line naming the file, if it would be refused."""
    sets = read_cache(state_dir)
    if sets is not None:
        _kept_policy(state_dir, sets, cfg, [])
    return sets


def _kept_policy(
    state_dir: str, sets: EndpointSets, cfg: PolicyConfig, warnings: list[str] | None
) -> Policy | None:
    """The rules of the kept `sets` (None if they are of another instance), verified as a
    download is: PolicyError, one line naming the file, if they would be refused."""
    if not _in_use(sets, cfg):
        return None
    try:
        return endpoints_policy(sets, cfg, warnings)
    except PolicyError as err:
        shown = "; ".join(err.errors[:SHOWN_ERRORS])
        more = len(err.errors) - SHOWN_ERRORS
        raise _unusable(
            cache_path(state_dir), shown + (f" (and {more} more)" if more > 0 else "")
        ) from None


def _unusable(path: str, reason: str) -> PolicyError:
    return PolicyError([f"{path}: unusable endpoint cache: {reason}"])


def stage_cache(state_dir: str, sets: EndpointSets) -> None:
    """Write ``sets`` beside the cache (``endpoints.json.new``), synced, for ``commit_cache``.

    The slow part (write, fsync) is done here, in the feed's thread; the commit is a rename,
    done right after the new policy is in force, with no await in between."""
    write_synced(cache_path(state_dir) + ".new", json.dumps(sets.to_json()))


def commit_cache(state_dir: str) -> None:
    """Put the staged sets in place of ``endpoints.json`` (an atomic rename)."""
    path = cache_path(state_dir)
    os.replace(path + ".new", path)


def discard_staged_cache(state_dir: str) -> None:
    """Remove staged sets that were not put in force."""
    path = cache_path(state_dir) + ".new"
    if os.path.exists(path):
        os.unlink(path)


def write_synced(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (creating its directory) and sync it to disk."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, sync it, rename it over ``path``."""
    tmp = f"{path}.tmp"
    write_synced(tmp, text)
    os.replace(tmp, path)


def endpoints_policy(
    sets: EndpointSets, cfg: PolicyConfig, warnings: list[str] | None = None
) -> Policy:
    """The rules of ``sets`` in the configured categories, ``<tenant>`` made ``cfg.tenant``.

    Names that cannot be used (``<tenant>-my.sharepoint.com`` without a tenant) are skipped,
    each with a warning: appended to ``warnings`` if given, else logged. A structural problem
    raises PolicyError."""
    categories = cfg.endpoints.categories if cfg.endpoints is not None else ()
    found: list[str] = []
    policy = policy_from_endpoints_json(
        sets.endpoints,
        sets.version,
        categories,
        source=f"endpoints:{sets.instance}",
        tenant=cfg.tenant,
        warnings=found,
    )
    found = [f"endpoint web service: {warning}" for warning in found]
    if warnings is None:
        for warning in found:
            log.warning("%s", warning)
    else:
        warnings.extend(found)
    return policy


def merge_endpoints(
    policy: Policy,
    cfg: PolicyConfig,
    sets: EndpointSets | None,
    warnings: list[str] | None = None,
) -> Policy:
    """``policy`` plus the rules of ``sets`` if they are of the configured instance.

    Sets downloaded for another tenant are still used (their names are Microsoft 365 names
    too) until the next version check downloads the configured tenant's."""
    if sets is None or not _in_use(sets, cfg):
        return policy
    feed = endpoints_policy(sets, cfg, warnings)
    return merge_policies([policy, feed], cfg.include_optional)


def _in_use(sets: EndpointSets, cfg: PolicyConfig) -> bool:
    """Whether ``sets`` are of the configured instance (then they are merged)."""
    return cfg.endpoints is not None and sets.instance == cfg.endpoints.instance


def effective_policy(
    config: Config, sets: EndpointSets | None = None, warnings: list[str] | None = None
) -> Policy:
    """What resolverd runs with: built-in + files (include_optional, tenant) + endpoint sets.

    The endpoint sets are ``sets`` if given (a download not yet kept), else those kept in
    ``state_dir`` if they can be used (read once, verified as a download is); kept sets that
    cannot be are left out, saying which file and why. That and the names skipped from the
    sets are appended to ``warnings`` if given, else logged. Raises PolicyError listing every
    problem of the config's policy, or of ``sets``; never for what the kept copy holds."""
    p = config.policy
    policy = load_policy(p.builtin, p.files, p.include_optional, p.tenant)
    if p.endpoints is None:
        return policy
    if sets is not None:
        return merge_endpoints(policy, p, sets, warnings)
    try:  # the kept sets: read and verified once, their rules built once
        kept = read_cache(config.state_dir)
        feed = None if kept is None else _kept_policy(config.state_dir, kept, p, warnings)
    except PolicyError as err:
        message = f"{err.errors[0]}; left out until the next version check downloads it again"
        if warnings is None:
            log.warning("%s", message)
        else:
            warnings.append(message)
        feed = None
    return policy if feed is None else merge_policies([policy, feed], p.include_optional)
