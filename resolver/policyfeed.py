"""The endpoint web service's rules, kept in the state directory.

`update()` asks the service for its version and downloads the endpoint sets only when the
version changed (as Microsoft asks clients to do). The download is verified, then written
atomically to ``endpoints.json``; `merge()` adds those rules to the configured policy, so a
restart has them without reaching the service. The client request id is kept in
``endpoints-client-id`` (the service wants one id per client, stable across requests).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from policy.endpoints import (
    EndpointsClient,
    EndpointsError,
    new_client_request_id,
    policy_from_endpoints_json,
)
from policy.loader import PolicyError, load_policy, merge_policies
from policy.model import Policy
from resolver.config import Config, EndpointsConfig, PolicyConfig
from resolver.control.protocol import UpdateFailed

log = logging.getLogger("resolverd.policy")


def effective_policy(config: Config) -> Policy:
    """What resolverd runs with: built-in + files (include_optional) + cached endpoint sets."""
    p = config.policy
    policy = load_policy(p.builtin, p.files, p.include_optional)
    return PolicyFeed(config.state_dir).merge(policy, p)


class PolicyFeed:
    def __init__(self, state_dir: str) -> None:
        self.data_path = os.path.join(state_dir, "endpoints.json")
        self.id_path = os.path.join(state_dir, "endpoints-client-id")

    def merge(self, policy: Policy, cfg: PolicyConfig) -> Policy:
        """`policy` plus the cached endpoint sets of the configured categories, if any."""
        if cfg.endpoints is None:
            return policy
        cached = self._read()
        if cached is None or cached.get("instance") != cfg.endpoints.instance:
            return policy
        warnings: list[str] = []
        feed = policy_from_endpoints_json(
            cached.get("endpoints"),
            str(cached.get("version", "")),
            cfg.endpoints.categories,
            source=f"endpoints:{cfg.endpoints.instance}",
            warnings=warnings,
        )
        for warning in warnings:
            log.warning("endpoint web service: %s", warning)
        return merge_policies([policy, feed], cfg.include_optional)

    def cached_version(self) -> str | None:
        cached = self._read()
        return None if cached is None else str(cached.get("version", ""))

    def update(self, cfg: EndpointsConfig) -> tuple[bool, str]:
        """Fetch the endpoint sets if the service's version changed: (changed, version).

        Blocking (HTTP): the daemon runs it in a thread."""
        try:
            return self._update(cfg)
        except PolicyError as err:
            raise UpdateFailed("endpoint web service: " + "; ".join(err.errors)) from None
        except (EndpointsError, OSError) as err:
            raise UpdateFailed(f"endpoint web service: {err}") from None

    def _update(self, cfg: EndpointsConfig) -> tuple[bool, str]:
        client = EndpointsClient(cfg.url, cfg.instance, self._client_id())
        version = client.fetch_version()
        cached = self._read()
        if cached and cached.get("version") == version and cached.get("instance") == cfg.instance:
            return False, version
        endpoints = client.fetch_endpoints()
        policy_from_endpoints_json(endpoints, version, cfg.categories)  # verify before keeping
        body = {"instance": cfg.instance, "version": version, "endpoints": endpoints}
        _write_atomically(self.data_path, json.dumps(body))
        return True, version

    def _read(self) -> dict[str, Any] | None:
        try:
            with open(self.data_path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise PolicyError([f"{self.data_path}: unreadable endpoint cache: {err}"]) from None
        if not isinstance(data, dict):
            raise PolicyError([f"{self.data_path}: expected a JSON object"])
        return data

    def _client_id(self) -> str:
        try:
            with open(self.id_path, encoding="ascii") as fh:
                return fh.read().strip()
        except FileNotFoundError:
            client_id = new_client_request_id()
            _write_atomically(self.id_path, client_id + "\n")
            return client_id


def _write_atomically(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
