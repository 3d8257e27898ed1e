"""The policy the CLI works with: the same one the daemon would load.

`--config FILE` if given, else the default config file if it exists, else the built-in table
with the optional rows. From a config: built-in + extra files (include_optional applied) + the
endpoint web service's cached sets, with ``policy.tenant`` applied, exactly as resolverd merges
them (``resolver.endpointcache``: no HTTP, so resolverctl loads no ssl, urllib or asyncio).
"""

from __future__ import annotations

import os

from policy.loader import PolicyError, load_policy
from policy.model import Policy
from resolver.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from resolver.ctl import client
from resolver.endpointcache import effective_policy


def load(config: str | None) -> Policy:
    """Raises PolicyError listing every problem (config errors included, with their file)."""
    return load_with_config(config)[0]


def load_with_config(config: str | None) -> tuple[Policy, Config | None]:
    """The policy, and the config it came from (None: the built-in table, no config)."""
    if config is None and os.path.exists(DEFAULT_CONFIG):
        config = DEFAULT_CONFIG
    if config is None:
        return load_policy("microsoft365", (), include_optional=True), None
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise PolicyError(exc.errors) from None
    warnings: list[str] = []
    policy = effective_policy(cfg, warnings=warnings)
    for warning in warnings:
        client.warn(warning)
    return policy, cfg
