"""``resolverctl policy update|export``: the Microsoft 365 policy.

``policy update [--json]`` asks the daemon to check the endpoint web service's version now and
fetch the endpoints if it changed; it prints the daemon's answer.

``policy export --format yaml|pac [--config FILE] [--proxy SPEC]`` works without the daemon: it
loads the policy the way the daemon would (the config's ``policy`` section, or without a config
the built-in table with the optional rows) and prints it

* as YAML in the policy-file schema (``policy/microsoft365.yaml``): it loads back unchanged as a
  policy file;
* as a proxy auto-config file: ``FindProxyForURL`` returns ``DIRECT`` for the policy's names
  (``shExpMatch`` for ``*.`` wildcards, a test for exactly one label before the rest for
  ``<tenant>.`` wildcards, ``==`` for exact names) and for IPv4 literals inside its prefixes,
  and the ``--proxy`` result for everything else. ``--proxy`` takes ``HOST:PORT``
  (meaning ``PROXY HOST:PORT``) or a PAC result such as ``"PROXY p1:3128; DIRECT"``. Without it
  everything else goes DIRECT too, and a warning says so: such a file changes nothing until a
  proxy is filled in.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from typing import TYPE_CHECKING, Any

from resolver.ctl import client
from resolver.ctl.blocks import mapping_pairs, render_blocks

if TYPE_CHECKING:
    from policy.model import Policy

_PAC_KEYWORDS = ("DIRECT", "PROXY", "SOCKS", "SOCKS4", "SOCKS5", "HTTP", "HTTPS")
_PAC_SAFE = re.compile(r"[A-Za-z0-9.:;_\-\[\] ]+\Z")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("policy", help="update or export the Microsoft 365 policy")
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    update = actions.add_parser(
        "update",
        help="make the daemon check the endpoint web service now",
        description="Ask resolverd to check the endpoint web service's version now and "
        "fetch the endpoints if it changed.",
    )
    update.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    update.add_argument("--config", metavar="FILE", help="find the socket from this config")
    export = actions.add_parser(
        "export",
        help="print the policy as YAML or as a PAC file (no daemon needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--format", choices=("yaml", "pac"), default="yaml")
    export.add_argument("--config", metavar="FILE", help="take the policy from this config file")
    export.add_argument(
        "--proxy",
        metavar="SPEC",
        help="PAC result for names outside the policy: HOST:PORT or e.g. 'PROXY p:3128; DIRECT'",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.policy_command == "update":
        return _update(args)
    return _export(args)


def _update(args: argparse.Namespace) -> int:
    result = client.request(args, "policy_update", client.ADMIN_TIMEOUT)
    if args.json:
        client.print_json(result)
    else:
        pairs = mapping_pairs(result) if isinstance(result, dict) else []
        print(render_blocks([("Policy update", pairs)]), end="")
    return client.EXIT_OK


def load(config: str | None) -> Policy:
    """The policy as the daemon would load it; errors become CtlError listing every problem."""
    from policy.loader import PolicyError
    from resolver.ctl import policysource

    try:
        return policysource.load(config)
    except PolicyError as exc:
        raise client.CtlError("\n".join([*exc.errors, "cannot load the policy"])) from None


def _export(args: argparse.Namespace) -> int:
    policy = load(args.config)
    if args.format == "yaml":
        print(to_yaml(policy), end="")
        return client.EXIT_OK
    if args.proxy is None:
        client.warn("no --proxy given: names outside the policy go DIRECT as well")
    print(to_pac(policy, proxy_result(args.proxy)), end="")
    return client.EXIT_OK


# --- YAML --------------------------------------------------------------------------------------


def policy_document(policy: Policy) -> dict[str, Any]:
    """The policy as a policy-file mapping; empty optional fields left out."""
    rules: list[dict[str, Any]] = []
    for rule in policy.rules:
        item: dict[str, Any] = {"row": rule.row, "purpose": rule.purpose, "required": rule.required}
        if rule.expressroute is not None:
            item["expressroute"] = rule.expressroute
        if rule.patterns:
            item["domains"] = list(rule.patterns)
        if rule.cidrs:
            item["cidrs"] = list(rule.cidrs)
        if rule.ports:
            item["ports"] = list(rule.ports)
        if rule.category is not None:
            item["category"] = rule.category
        if rule.notes:
            item["notes"] = rule.notes
        rules.append(item)
    document: dict[str, Any] = {}
    if policy.version:
        document["version"] = policy.version
    document["rules"] = rules
    return document


def to_yaml(policy: Policy) -> str:
    import yaml

    rows = [rule.row for rule in policy.rules]
    if len(set(rows)) != len(rows):
        client.warn("rows repeat across the merged policy files; the export will not load back")
    head = (
        f"# Policy exported by resolverctl from {policy.source}\n"
        "# Schema: policy/microsoft365.yaml (resolverd); load it with policy.files.\n"
    )
    body: str = yaml.safe_dump(
        policy_document(policy), sort_keys=False, allow_unicode=False, width=100
    )
    return head + body


# --- PAC ---------------------------------------------------------------------------------------


def proxy_result(spec: str | None) -> str:
    """The PAC result string for ``--proxy``: HOST:PORT becomes ``PROXY HOST:PORT``."""
    if spec is None:
        return "DIRECT"
    spec = " ".join(spec.split())
    if not spec or not _PAC_SAFE.match(spec):
        raise client.CtlError(f"--proxy {spec!r}: use HOST:PORT or a PAC result like 'PROXY h:p'")
    parts = [part.strip() for part in spec.split(";") if part.strip()]
    if len(parts) == 1 and parts[0].split()[0].upper() not in _PAC_KEYWORDS:
        if " " in parts[0] or ":" not in parts[0]:
            raise client.CtlError(f"--proxy {spec!r}: expected HOST:PORT")
        return f"PROXY {parts[0]}"
    for part in parts:
        words = part.split()
        keyword = words[0].upper()
        if keyword not in _PAC_KEYWORDS or (keyword == "DIRECT") != (len(words) == 1):
            raise client.CtlError(f"--proxy {spec!r}: {part!r} is not a PAC result")
    return "; ".join(parts)


def _mask(prefix_len: int) -> str:
    bits = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF if prefix_len else 0
    return ".".join(str((bits >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _pac_test(pattern: str) -> str:
    """The JavaScript condition for one pattern (``host`` is lower case, without the final dot).

    ``*.office.com``: ``shExpMatch`` (any number of labels before ``.office.com``).
    ``<tenant>.onmicrosoft.com``: exactly one label, i.e. the host from its first dot on is
    ``.onmicrosoft.com`` (``shExpMatch``'s ``*`` would also match ``a.b.onmicrosoft.com``)."""
    from policy.model import TENANT_PREFIX

    q = json.dumps  # names are LDH A-labels; quoting them as JSON strings is valid JavaScript
    if pattern.startswith("*."):
        return f"shExpMatch(host, {q(pattern)})"
    if pattern.startswith(TENANT_PREFIX):
        rest = q(pattern[len(TENANT_PREFIX) - 1 :])
        return f'(host.indexOf(".") > 0 && host.substring(host.indexOf(".")) == {rest})'
    return f"host == {q(pattern)}"


def _comment(text: str) -> str:
    """`text` for a // comment of the PAC: printable ASCII only. A line terminator (a newline,
    U+2028...) in a feed's version or a set's name would end the comment and the rest would be
    run by every browser using the PAC; an escape sequence would reach a terminal."""
    return "".join(ch if " " <= ch <= "~" else f"\\u{ord(ch):04x}" for ch in text)


def to_pac(policy: Policy, fallback: str) -> str:
    """A PAC file sending the policy's names DIRECT and everything else to `fallback`."""
    q = json.dumps  # names are LDH A-labels; quoting them as JSON strings is valid JavaScript
    version = f", version {policy.version}" if policy.version else ""
    lines = [
        "// Microsoft 365 local breakout: generated by 'resolverctl policy export --format pac'.",
        _comment(f"// Policy {policy.source}{version}, {len(policy.rules)} rules."),
        _comment(f"// DIRECT: the policy's names and IPv4 prefixes; everything else: {fallback}."),
        "function FindProxyForURL(url, host) {",
        "    host = host.toLowerCase();",
        '    if (host.charAt(host.length - 1) == ".") host = host.substring(0, host.length - 1);',
    ]
    v4: list[str] = []
    v6 = 0
    for rule in policy.rules:
        for cidr in rule.cidrs:
            if ":" in cidr:
                v6 += 1
            else:
                address, _, length = cidr.partition("/")
                v4.append(f"isInNet(host, {q(address)}, {q(_mask(int(length or 32)))})")
        if not rule.patterns:
            continue
        tests = [_pac_test(p) for p in rule.patterns]
        purpose = textwrap.shorten(_comment(rule.purpose), 80, placeholder=" ...")
        lines.append(f"    // row {rule.row}: {purpose}")
        lines.append("    if (" + " ||\n        ".join(tests) + ")")
        lines.append('        return "DIRECT";')
    if v4:
        lines.append("    // IPv4 literals inside the policy's prefixes (no DNS lookup for names)")
        lines.append("    if (/^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$/.test(host) &&")
        lines.append("        (" + " ||\n         ".join(v4) + "))")
        lines.append('        return "DIRECT";')
    if v6:
        lines.append(f"    // {v6} IPv6 prefixes left out: PAC has no portable IPv6 match")
    lines.append(f"    return {q(fallback)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
