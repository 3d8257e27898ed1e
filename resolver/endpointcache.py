"""The endpoint web service's sets as kept in the state directory, and the policy they give.

``resolver.feed`` fetches the sets and keeps them here (``endpoints.json``, atomically); this
module reads them and merges them into the configured policy. ``effective_policy`` is what
resolverd runs with and what ``resolverctl explain``/``policy export`` show, so this module
does no HTTP and imports nothing that does (resolverctl may not load ssl, urllib or asyncio).
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
from resolver.config import Config, PolicyConfig

log = logging.getLogger("resolverd.policy")

CACHE_FILE = "endpoints.json"


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
    """The kept download, or None if there is none; PolicyError if it cannot be read."""
    path = cache_path(state_dir)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise PolicyError([f"{path}: unreadable endpoint cache: {err}"]) from None
    if not isinstance(data, dict):
        raise PolicyError([f"{path}: expected a JSON object"])
    tenant = data.get("tenant")
    endpoints = data.get("endpoints")
    if not isinstance(endpoints, list):
        raise PolicyError([f"{path}: /endpoints: expected a list of endpoint sets"])
    return EndpointSets(
        instance=str(data.get("instance", "")),
        version=str(data.get("version", "")),
        endpoints=endpoints,
        tenant=tenant if isinstance(tenant, str) else None,
    )


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
    if cfg.endpoints is None or sets is None or sets.instance != cfg.endpoints.instance:
        return policy
    feed = endpoints_policy(sets, cfg, warnings)
    return merge_policies([policy, feed], cfg.include_optional)


def effective_policy(
    config: Config, sets: EndpointSets | None = None, warnings: list[str] | None = None
) -> Policy:
    """What resolverd runs with: built-in + files (include_optional, tenant) + endpoint sets.

    The endpoint sets are ``sets`` if given (a download not yet kept), else those kept in
    ``state_dir``. Names skipped from them are appended to ``warnings`` if given, else logged.
    Raises PolicyError listing every problem."""
    p = config.policy
    policy = load_policy(p.builtin, p.files, p.include_optional, p.tenant)
    if p.endpoints is None:
        return policy
    if sets is None:
        sets = read_cache(config.state_dir)
    return merge_endpoints(policy, p, sets, warnings)
