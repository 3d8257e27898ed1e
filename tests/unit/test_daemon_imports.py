"""What the daemon loads at start: not what only a setting it lacks would use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_the_daemon_loads_no_http_client_without_policy_endpoints() -> None:
    """urllib.request, http.client and email cost 3 MiB of RSS; only the endpoint service's
    client needs them, and policy.endpoints is off by default (resolver.endpointerrors)."""
    code = (
        "import json, sys, resolver.daemon; from policy.loader import builtin_policy; "
        "builtin_policy(); print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert "resolver.feed" in loaded  # the feed itself is there, with its state and timers
    heavy = {"resolver.endpointclient", "urllib.request", "http.client", "email.utils"}
    assert heavy & loaded == set()
    # The built-in policy is read through pkgutil (policy.loader), not importlib.resources.
    assert "importlib.resources" not in loaded
