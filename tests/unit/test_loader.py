"""Loading policy YAML: good files, and bad ones reported with file, line and JSON pointer."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from policy.loader import (
    PolicyError,
    builtin_policy,
    load_policy,
    load_policy_file,
    load_policy_text,
    normalise_name,
    normalise_pattern,
    normalise_port,
    with_tenant,
)
from policy.model import Policy, Rule

pytestmark = pytest.mark.unit

GOOD = """\
version: "2024-test"
rules:
  - row: 1
    purpose: Contoso portal
    required: true
    expressroute: yes
    domains: ["*.Contoso.example.", "portal.contoso.example", "<tenant>.contoso.test"]
    cidrs: ["192.0.2.0/24", "2001:DB8::/32"]
    ports: [tcp/443, UDP/3478-3481]
    notes: "  kept  "
  - row: 2
    purpose: ""
    required: false
    expressroute: null
    category: Optimize
    domains:
"""


def errors_of(text: str, source: str = "t.yaml") -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(textwrap.dedent(text), source)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


def test_good_document() -> None:
    policy = load_policy_text(GOOD, "good.yaml")
    assert policy.source == "good.yaml"
    assert policy.version == "2024-test"
    assert policy.rules == (
        Rule(
            row=1,
            purpose="Contoso portal",
            required=True,
            patterns=("*.contoso.example", "portal.contoso.example", "<tenant>.contoso.test"),
            cidrs=("192.0.2.0/24", "2001:db8::/32"),
            ports=("tcp/443", "udp/3478-3481"),
            expressroute=True,
            notes="kept",
        ),
        Rule(row=2, purpose="", required=False, expressroute=None, category="Optimize"),
    )
    assert policy.cidrs == ("192.0.2.0/24", "2001:db8::/32")


def test_duplicates_within_a_rule_appear_once() -> None:
    text = """\
    rules:
      - {row: 6, purpose: p, required: true, domains: [a.example, A.example., a.example],
         cidrs: [192.0.2.1/32, 192.0.2.1/32], ports: [tcp/443, TCP/443]}
    """
    (rule,) = load_policy_text(textwrap.dedent(text), "t.yaml").rules
    assert rule.patterns == ("a.example",)
    assert rule.cidrs == ("192.0.2.1/32",)
    assert rule.ports == ("tcp/443",)


def test_idn_names_become_a_labels() -> None:
    text = """\
    rules:
      - {row: 1, purpose: p, required: true, domains: ["*.bücher.example", "BÜCHER.example"]}
    """
    (rule,) = load_policy_text(textwrap.dedent(text), "t.yaml").rules
    assert rule.patterns == ("*.xn--bcher-kva.example", "xn--bcher-kva.example")


def test_bad_pattern_has_file_line_and_pointer() -> None:
    text = """\
    rules:
      - row: 1
        purpose: p
        required: true
      - row: 2
        purpose: p
        required: true
      - row: 3
        purpose: p
        required: true
      - row: 4
        purpose: p
        required: true
        domains:
          - "*."
    """
    assert errors_of(text) == ["t.yaml:15: /rules/3/domains/0: '*.': empty label"]


def test_every_error_is_reported_at_once() -> None:
    text = """\
    version: 3
    colour: blue
    rules:
      - row: one
        purpose: p
        required: maybe
        domains: [ok.example, a.*.example, "-bad.example", "sp ace.example", "x"]
      - row: 2
        required: true
        expresroute: true
        cidrs: [192.0.2.1/24, 300.1.1.1/32, "2001:db8::/32"]
        ports: [tcp/0, sctp/5, tcp/70000, udp/20-10, tcp/443, tcp/x]
      - row: 2
        purpose: [not, text]
        required: true
        expressroute: sometimes
        category: Fast
      - just a string
      - row: 2
        purpose: p
        required: false
      - row: 7
        purpose: p
        required: true
        domains: "a.example"
        notes: 5
    """
    assert errors_of(text) == [
        "t.yaml:1: /version: expected a string, got 3",
        "t.yaml:2: /colour: unknown key (known: version, rules)",
        "t.yaml:4: /rules/0/row: expected a positive integer, got 'one'",
        "t.yaml:6: /rules/0/required: expected true or false, got 'maybe'",
        "t.yaml:7: /rules/0/domains/1: 'a.*.example': '*' is only allowed as the whole first label",
        "t.yaml:7: /rules/0/domains/2: '-bad.example': label '-bad' starts or ends with a hyphen",
        "t.yaml:7: /rules/0/domains/3: 'sp ace.example': invalid character ' '",
        "t.yaml:8: /rules/1: missing key 'purpose'",
        "t.yaml:10: /rules/1/expresroute: unknown key (known: row, purpose, required, "
        "expressroute, domains, cidrs, ports, category, notes)",
        "t.yaml:11: /rules/1/cidrs/0: '192.0.2.1/24': 192.0.2.1/24 has host bits set",
        "t.yaml:11: /rules/1/cidrs/1: '300.1.1.1/32': "
        "'300.1.1.1/32' does not appear to be an IPv4 or IPv6 network",
        "t.yaml:12: /rules/1/ports/0: 'tcp/0': port 0 is outside 1-65535",
        "t.yaml:12: /rules/1/ports/1: 'sctp/5': "
        "expected tcp/N, udp/N or a range such as udp/3478-3481",
        "t.yaml:12: /rules/1/ports/2: 'tcp/70000': port 70000 is outside 1-65535",
        "t.yaml:12: /rules/1/ports/3: 'udp/20-10': range 20-10 is reversed",
        "t.yaml:12: /rules/1/ports/5: 'tcp/x': 'x' is not a port number",
        "t.yaml:13: /rules/2: duplicate row 2 (first at line 8)",
        "t.yaml:14: /rules/2/purpose: expected a string, got a list",
        "t.yaml:16: /rules/2/expressroute: expected true or false, got 'sometimes'",
        "t.yaml:17: /rules/2/category: expected one of Optimize, Allow, Default, got 'Fast'",
        "t.yaml:18: /rules/3: expected a mapping, got 'just a string'",
        "t.yaml:19: /rules/4: duplicate row 2 (first at line 8)",
        "t.yaml:25: /rules/5/domains: expected a list, got 'a.example'",
        "t.yaml:26: /rules/5/notes: expected a string, got 5",
    ]


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("*", "a wildcard needs a name after '*.'"),
        ("*.", "empty label"),
        ("", "empty name"),
        (".", "empty label"),
        ("a..example", "empty label"),
        ("*.*.example", "'*' is only allowed as the whole first label"),
        ("*x.example", "'*' is only allowed as the whole first label"),
        ("under_score.example", "invalid character '_'"),
        ("a" * 64 + ".example", f"label '{'a' * 64}' is longer than 63 octets"),
        (".".join(["a" * 63] * 4), "name longer than 253 octets"),
        ("bad-.example", "label 'bad-' starts or ends with a hyphen"),
        ("<tenant>.", "a wildcard needs a name after '<tenant>.'"),
        ("<tenant>.*.example", "'*' is only allowed as the whole first label"),
        ("<TENANT>.example", "invalid character '<'"),
        # 252 octets after "<tenant>.": the tenant's name would be at least 254
        ("<tenant>." + ".".join(["a" * 63] * 3 + ["a" * 60]), "name longer than 253 octets"),
    ]
    + [
        (
            pattern,
            "'<tenant>' inside a name needs policy.tenant (only a whole first label "
            "'<tenant>.' is a wildcard)",
        )
        for pattern in ("<tenant>-my.sharepoint.com", "*.<tenant>.example", "a.<tenant>.example")
    ],
)
def test_pattern_grammar(pattern: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalise_pattern(pattern)
    assert str(caught.value) == problem


def test_pattern_and_name_forms() -> None:
    assert normalise_pattern("<tenant>.onmicrosoft.com") == "<tenant>.onmicrosoft.com"
    assert normalise_pattern("<tenant>.OnMicrosoft.com.") == "<tenant>.onmicrosoft.com"
    # with a tenant, <tenant> anywhere becomes it: exact names
    assert normalise_pattern("<tenant>.onmicrosoft.com", "contoso") == "contoso.onmicrosoft.com"
    assert normalise_pattern("<tenant>-my.sharepoint.com", "contoso") == "contoso-my.sharepoint.com"
    assert normalise_pattern("*.office.com", "contoso") == "*.office.com"
    assert normalise_pattern("Office.COM.") == "office.com"
    assert normalise_pattern("xn--bcher-kva.example") == "xn--bcher-kva.example"
    assert normalise_name("_sip._tls.Example.COM.") == "_sip._tls.example.com"
    assert normalise_name("bücher.example") == "xn--bcher-kva.example"
    assert normalise_port(" TCP/0443 ") == "tcp/443"
    with pytest.raises(ValueError, match="only allowed as the whole first label"):
        normalise_name("*.example.com")
    with pytest.raises(ValueError, match="not a valid IDN label"):
        normalise_name("é" * 70 + ".example")


def test_yaml_syntax_error_is_one_error_with_a_line() -> None:
    text = "rules:\n  - row: 1\n    purpose: [unclosed\n  - row: 2\n"
    errors = errors_of(text, "broken.yaml")
    assert len(errors) == 1
    assert errors[0].startswith("broken.yaml:4: invalid YAML: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "t.yaml:1: /: empty document, expected a mapping with 'rules'"),
        ("- a\n- b\n", "t.yaml:1: /: expected a mapping, got a list"),
        ("version: x\n", "t.yaml:1: /: missing key 'rules'"),
        ("rules: {}\n", "t.yaml:1: /rules: expected a list, got a mapping"),
        (
            "rules:\n  - {row: 1, purpose: p, required: true, row: 2}\n",
            "t.yaml:2: /rules/0/row: duplicate key",
        ),
        ("rules: []\nrules: []\n", "t.yaml:2: /rules: duplicate key"),
        (
            "rules: !!python/object:os.system {}\n",
            "t.yaml:1: /rules: expected a list, got a mapping",
        ),
        ("rules: !custom []\n", "t.yaml:1: /rules: unsupported tag '!custom'"),
        ("!!set {rules: []}\n", "t.yaml:1: /: unsupported tag 'tag:yaml.org,2002:set'"),
        (
            "rules:\n  - {row: !!binary 'AQ==', purpose: p, required: true}\n",
            "t.yaml:2: /rules/0/row: unsupported tag 'tag:yaml.org,2002:binary'",
        ),
        (
            "rules:\n  - {row: !!int x, purpose: p, required: true}\n",
            "t.yaml:2: /rules/0/row: unsupported tag 'tag:yaml.org,2002:int'",
        ),
        (
            "rules:\n  - {row: true, purpose: p, required: true}\n",
            "t.yaml:2: /rules/0/row: expected a positive integer, got true",
        ),
        (
            "rules:\n  - {row: 0, purpose: p, required: true}\n",
            "t.yaml:2: /rules/0/row: expected a positive integer, got 0",
        ),
        (
            "rules:\n  - {row: 2147483648, purpose: p, required: true}\n",
            "t.yaml:2: /rules/0/row: 2147483648 is out of range 1-2147483647 (the hold journal "
            "keeps the row of a route)",
        ),
        (
            "rules:\n  - {row: 1, purpose: ~, required: true}\n",
            "t.yaml:2: /rules/0/purpose: expected a string, got null",
        ),
        ("? [a]\n: 1\nrules: []\n", "t.yaml:1: /: keys must be strings, got a list"),
        ("rules: []\n<<: {version: x}\n", "t.yaml:2: /: merge keys ('<<') are not supported"),
        ("rules: []\n---\nrules: []\n", "t.yaml:2: invalid YAML: but found another document"),
        (
            "rules:\n  - a\n  - \x07\n",
            "t.yaml:3: invalid YAML: unacceptable character #x0007: "
            "special characters are not allowed",
        ),
    ],
)
def test_structural_errors(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_a_policy_without_rules_is_valid() -> None:
    policy = load_policy_text("rules: []\n", "empty.yaml")
    assert policy.rules == ()
    assert policy.version == ""


def test_builtin_policy() -> None:
    policy = builtin_policy()
    assert policy.source == "builtin:microsoft365"
    assert len(policy.rules) == 16
    assert [r.row for r in policy.rules] == list(range(1, 17))
    assert policy.cidrs == (
        "13.67.59.89/32",
        "40.69.150.142/32",
        "40.85.91.8/32",
        "104.211.54.99/32",
        "104.211.54.134/32",
    )
    with pytest.raises(PolicyError) as caught:
        builtin_policy("../etc/passwd")
    assert caught.value.errors == ["unknown builtin policy '../etc/passwd' (known: microsoft365)"]


def test_with_tenant_makes_tenant_patterns_exact() -> None:
    policy = load_policy_text(GOOD, "good.yaml")
    assert with_tenant(policy, None) is policy
    named = with_tenant(policy, "contoso")
    assert named.rules[0].patterns == (
        "*.contoso.example",
        "portal.contoso.example",
        "contoso.contoso.test",
    )
    assert named.rules[1] is policy.rules[1]
    assert (named.source, named.version) == (policy.source, policy.version)
    # a pattern already listed as the tenant's exact name appears once
    both = Policy(
        rules=(Rule(1, "p", True, ("<tenant>.example", "contoso.example", "<tenant>.example.")),),
    )
    assert with_tenant(both, "contoso").rules[0].patterns == ("contoso.example",)


def test_with_tenant_reports_names_it_makes_too_long() -> None:
    base = ".".join(["b" * 60] * 4)  # 243 octets: fine as <tenant>.base, not with a long tenant
    policy = Policy(rules=(Rule(7, "p", True, (normalise_pattern("<tenant>." + base),)),))
    with_tenant(policy, "short")
    with pytest.raises(PolicyError) as caught:
        with_tenant(policy, "t" * 20)
    assert caught.value.errors == [
        f"builtin:microsoft365: row 7: '<tenant>.{base}' with policy.tenant '{'t' * 20}': "
        "name longer than 253 octets"
    ]


def test_builtin_policy_keeps_tenant_as_written_and_load_policy_applies_it() -> None:
    row3 = builtin_policy().rules[2]
    assert "<tenant>.onmicrosoft.com" in row3.patterns
    assert "*.onmicrosoft.com" not in row3.patterns
    named = load_policy("microsoft365", (), include_optional=True, tenant="contoso")
    assert "contoso.onmicrosoft.com" in named.rules[2].patterns
    assert not any(p.startswith("<tenant>") for r in named.rules for p in r.patterns)
    assert "*.onmicrosoft.com" in named.rules[9].patterns  # row 10 keeps its wildcard
    assert builtin_policy().rules[2] == row3  # the cached built-in table is not changed


def test_policy_files_take_the_tenant(tmp_path: Path) -> None:
    path = tmp_path / "sp.yaml"
    path.write_text(
        "rules:\n"
        "  - {row: 50, purpose: sp, required: true,\n"
        "     domains: ['<tenant>-my.sharepoint.com', '<tenant>.sharepoint.com']}\n",
        encoding="utf-8",
    )
    named = load_policy(None, [str(path)], include_optional=True, tenant="contoso")
    assert named.rules[0].patterns == ("contoso-my.sharepoint.com", "contoso.sharepoint.com")
    with pytest.raises(PolicyError) as caught:
        load_policy(None, [str(path)], include_optional=True)
    assert caught.value.errors == [
        f"{path}:3: /rules/0/domains/0: '<tenant>-my.sharepoint.com': '<tenant>' inside a name "
        "needs policy.tenant (only a whole first label '<tenant>.' is a wildcard)"
    ]


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_load_policy_merges_in_order_and_drops_optional(tmp_path: Path) -> None:
    extra = write(
        tmp_path / "extra.yaml",
        """\
        version: "x1"
        rules:
          - {row: 100, purpose: mine, required: true, domains: [intranet.example]}
          - {row: 101, purpose: maybe, required: false, domains: [maybe.example]}
        """,
    )
    merged = load_policy("microsoft365", [extra], include_optional=True)
    assert merged.source == f"builtin:microsoft365+{extra}"
    assert merged.files == (extra,)
    assert merged.version == "seed-000_c9757fcc9d39b177+x1"
    assert [r.row for r in merged.rules] == [*range(1, 17), 100, 101]

    required_only = load_policy("microsoft365", [extra], include_optional=False)
    assert [r.row for r in required_only.rules] == [1, 2, 3, 4, 5, 6, 7, 100]
    assert all(r.required for r in required_only.rules)

    files_only = load_policy(None, [extra], include_optional=True)
    assert files_only.source == extra
    assert [r.row for r in files_only.rules] == [100, 101]
    assert load_policy(None, [], include_optional=True).rules == ()


def test_load_policy_reports_every_bad_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "rules:\n  - {row: 1, purpose: p, required: 1}\n")
    missing = str(tmp_path / "missing.yaml")
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"rules: []\n# caf\xe9\n")
    with pytest.raises(PolicyError) as caught:
        load_policy("nope", [bad, missing, str(latin1), str(tmp_path)], include_optional=True)
    assert caught.value.errors == [
        "unknown builtin policy 'nope' (known: microsoft365)",
        f"{bad}:2: /rules/0/required: expected true or false, got 1",
        f"{missing}: cannot read: No such file or directory",
        f"{latin1}: not UTF-8 text (byte 15: invalid continuation byte)",
        f"{tmp_path}: cannot read: Is a directory",
    ]


def test_load_policy_file(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "rules:\n  - {row: 3, purpose: p, required: true}\n")
    policy = load_policy_file(Path(path))
    assert policy.source == path
    assert policy.files == (path,)
    assert policy.rules[0].row == 3


def test_a_builtin_policy_file_missing_from_the_install_is_a_policy_error(tmp_path: Path) -> None:
    """An install that lost policy/microsoft365.yaml: the daemon says so as a policy error (its
    main reports those and exits 1), not with a FileNotFoundError traceback."""
    import shutil
    import subprocess
    import sys

    import policy

    copy = tmp_path / "policy"
    shutil.copytree(Path(policy.__file__).parent, copy, ignore=shutil.ignore_patterns("*.yaml"))
    code = (
        "from policy.loader import PolicyError, builtin_policy\n"
        "try:\n    builtin_policy()\nexcept PolicyError as exc:\n    print(exc.errors)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(tmp_path)}, check=True,
    )  # fmt: skip
    assert "builtin policy 'microsoft365': [Errno 2] No such file or directory" in out.stdout
