"""``resolverctl explain``: driven through its own ``register`` on a fresh parser, and once as
a real ``python -m resolver.ctl.main`` process."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resolver.ctl import explain
from tests.fakeendpoints import SAMPLE

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def run_explain(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="resolverctl")
    explain.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func is explain.run
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output_is_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    names = ["manage.office.com", "forms.office.com", "Contoso.onmicrosoft.com.", "example.com"]
    code, out, err = run_explain(["explain", *names], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "manage.office.com         row 7   manage.office.com         required  tcp/443",
        "forms.office.com          row 12  forms.office.com          optional  tcp/443",
        "Contoso.onmicrosoft.com.  row 3   <tenant>.onmicrosoft.com  required  tcp/443",
        "example.com               no match",
    ]


def test_json_output_keeps_order_and_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_explain(
        [
            "explain",
            "--json",
            "example.com",
            "X.Manage.Office.com",
            "testconnectivity.microsoft.com",
        ],
        capsys,
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {"name": "example.com", "match": None},
        {
            "name": "X.Manage.Office.com",
            "match": {
                "row": 7,
                "pattern": "*.manage.office.com",
                "required": True,
                "category": None,
                "ports": ["tcp/443"],
            },
        },
        {
            "name": "testconnectivity.microsoft.com",
            "match": {
                "row": 14,
                "pattern": "testconnectivity.microsoft.com",
                "required": False,
                "category": None,
                "ports": ["tcp/80", "tcp/443"],
            },
        },
    ]


def test_idn_names_are_matched_as_a_labels(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_explain(["explain", "--json", "bücher.office.com"], capsys)
    assert code == 0
    assert json.loads(out)[0]["match"]["pattern"] == "*.office.com"


def test_invalid_names_are_reported_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_explain(["explain", "bad..name", "office.com"], capsys)
    assert code == 1
    assert out.splitlines() == [
        "bad..name   invalid name: empty label",
        "office.com  row 3  office.com  required  tcp/443",
    ]
    assert err == "explain: 'bad..name': invalid name: empty label\n"
    code, out, err = run_explain(["explain", "--json", "*.office.com"], capsys)
    assert code == 1
    assert json.loads(out) == [
        {
            "name": "*.office.com",
            "match": None,
            "error": "invalid name: '*' is only allowed as the whole first label",
        }
    ]


def test_names_are_required() -> None:
    parser = argparse.ArgumentParser(prog="resolverctl")
    explain.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["explain"])


# --- with --config (needs the lead's resolver/config.py) ----------------------------------


def write_config(tmp_path: Path, policy: str) -> str:
    path = tmp_path / "resolverd.yaml"
    body = 'upstreams: ["192.0.2.53:53"]\n' + textwrap.dedent(policy)
    path.write_text(body, encoding="utf-8")
    return str(path)


def test_config_without_optional_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "policy: {builtin: microsoft365, include_optional: false}\n")
    code, out, err = run_explain(
        ["explain", "--config", config, "forms.office.com", "manage.office.com"], capsys
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "forms.office.com   no match",
        "manage.office.com  row 7  manage.office.com  required  tcp/443",
    ]


def test_config_with_extra_policy_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "rules:\n"
        "  - {row: 100, purpose: p, required: true, domains: ['*.corp.example'],"
        "     category: Optimize, ports: [udp/3478-3481]}\n"
        "  - {row: 101, purpose: p, required: false, domains: [office.com]}\n",
        encoding="utf-8",
    )
    config = write_config(
        tmp_path, f"policy: {{builtin: null, files: ['{extra}'], include_optional: true}}\n"
    )
    names = ["a.corp.example", "office.com", "www.office.com"]
    code, out, err = run_explain(["explain", "--config", config, "--json", *names], capsys)
    assert (code, err) == (0, "")
    assert [item["match"] and item["match"]["row"] for item in json.loads(out)] == [100, 101, None]
    code, out, err = run_explain(["explain", "--config", config, *names], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "a.corp.example  row 100  *.corp.example  required  Optimize  udp/3478-3481",
        "office.com      row 101  office.com      optional  -         -",
        "www.office.com  no match",
    ]


def test_bad_policy_file_lists_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "rules:\n  - {row: 1, purpose: p, required: true, domains: ['*.']}\n"
        "  - {row: 1, purpose: p, required: yes please}\n",
        encoding="utf-8",
    )
    config = write_config(tmp_path, f"policy: {{files: ['{extra}']}}\n")
    code, out, err = run_explain(["explain", "--config", config, "office.com"], capsys)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"{extra}:2: /rules/0/domains/0: '*.': empty label",
        f"{extra}:3: /rules/1/required: expected true or false, got 'yes please'",
        f"{extra}:3: /rules/1: duplicate row 1 (first at line 2)",
        "explain: cannot load the policy",
    ]


def test_bad_config_is_one_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "policy: {include_optional: perhaps}\n")
    code, out, err = run_explain(["explain", "--config", config, "office.com"], capsys)
    assert (code, out) == (1, "")
    lines = err.splitlines()
    assert lines[-1] == "explain: cannot load the policy"
    assert len(lines) >= 2
    assert all(line.startswith(config) for line in lines[:-1])
    assert "include_optional" in err
    assert "Traceback" not in err

    missing = str(tmp_path / "missing.yaml")
    code, out, err = run_explain(["explain", "--config", missing, "office.com"], capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[0].startswith(f"{missing}: ")


def test_tenant_one_label_without_a_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    names = ["contoso.onmicrosoft.com", "a.b.onmicrosoft.com", "onmicrosoft.com"]
    code, out, err = run_explain(["explain", "--json", *names], capsys)
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {
            "name": "contoso.onmicrosoft.com",
            "match": {
                "row": 3,
                "pattern": "<tenant>.onmicrosoft.com",
                "required": True,
                "category": None,
                "ports": ["tcp/443"],
            },
        },
        {
            "name": "a.b.onmicrosoft.com",
            "match": {
                "row": 10,
                "pattern": "*.onmicrosoft.com",
                "required": False,
                "category": None,
                "ports": ["tcp/80", "tcp/443"],
            },
        },
        {"name": "onmicrosoft.com", "match": None},
    ]


def test_config_with_a_tenant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "policy: {tenant: contoso, include_optional: true}\n")
    names = ["contoso.onmicrosoft.com", "fabrikam.onmicrosoft.com", "a.b.onmicrosoft.com"]
    code, out, err = run_explain(["explain", "--config", config, *names], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "contoso.onmicrosoft.com   row 3   contoso.onmicrosoft.com  required  tcp/443",
        "fabrikam.onmicrosoft.com  row 10  *.onmicrosoft.com        optional  tcp/80,tcp/443",
        "a.b.onmicrosoft.com       row 10  *.onmicrosoft.com        optional  tcp/80,tcp/443",
    ]


def write_endpoint_cache(state: Path, tenant: str | None = None) -> None:
    state.mkdir(parents=True, exist_ok=True)
    body = {"instance": "Worldwide", "tenant": tenant, "version": "2024103100", "endpoints": SAMPLE}
    (state / "endpoints.json").write_text(json.dumps(body), encoding="utf-8")


def endpoints_config(tmp_path: Path, tenant: str | None) -> str:
    policy = "policy: {endpoints: {url: 'https://127.0.0.1:9'}" + (
        f", tenant: {tenant}}}\n" if tenant else "}\n"
    )
    return write_config(tmp_path, f"state_dir: {tmp_path / 'state'}\n{policy}")


SHAREPOINT = ["contoso.sharepoint.com", "contoso-my.sharepoint.com", "x.y.sharepoint.com"]


def test_cached_service_names_without_a_tenant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_endpoint_cache(tmp_path / "state")
    config = endpoints_config(tmp_path, None)
    code, out, err = run_explain(["explain", "--config", config, "--json", *SHAREPOINT], capsys)
    assert code == 0
    patterns = [(item["match"]["row"], item["match"]["pattern"]) for item in json.loads(out)]
    assert patterns == [
        (31, "<tenant>.sharepoint.com"),
        (31, "<tenant>.sharepoint.com"),  # <tenant>-my cannot be matched: one label will do
        (31, "*.sharepoint.com"),
    ]
    assert "'<tenant>-my.sharepoint.com'" in err and "skipped" in err  # the warning


def test_cached_service_names_with_a_tenant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_endpoint_cache(tmp_path / "state")
    config = endpoints_config(tmp_path, "contoso")
    code, out, err = run_explain(["explain", "--config", config, "--json", *SHAREPOINT], capsys)
    assert code == 0
    patterns = [(item["match"]["row"], item["match"]["pattern"]) for item in json.loads(out)]
    assert patterns == [
        (31, "contoso.sharepoint.com"),
        (31, "contoso-my.sharepoint.com"),
        (31, "*.sharepoint.com"),
    ]
    assert "tenant" not in err


# --- as a process -----------------------------------------------------------------------------


HEAVY = ("asyncio", "dnslib", "pyroute2", "ssl", "http", "http.client", "urllib.request")


@pytest.mark.parametrize("with_config", [False, True])
def test_resolverctl_process_imports_no_daemon_modules(tmp_path: Path, with_config: bool) -> None:
    # With a config: endpoints configured, their sets cached, a tenant; the cache is read.
    argv = ["resolverctl", "explain", "--json", "manage.office.com", "contoso.sharepoint.com"]
    if with_config:
        write_endpoint_cache(tmp_path / "state")
        argv[2:2] = ["--config", endpoints_config(tmp_path, "contoso")]
    probe = (
        f"import sys, runpy; sys.argv = {argv!r};"
        "code = 0\n"
        "try:\n    runpy.run_module('resolver.ctl.main', run_name='__main__')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('HEAVY', heavy, code, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.stderr.strip().splitlines()[-1] == "HEAVY [] 0"
    matches = json.loads(done.stdout)
    assert matches[0]["match"]["row"] == 7
    if with_config:
        assert matches[1]["match"]["pattern"] == "contoso.sharepoint.com"
    else:
        assert matches[1]["match"] is None  # not in the built-in table


def test_explain_says_which_upstream_set_a_name_goes_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        f"""\
        state_dir: {tmp_path}/state
        forward_zones: {{corp.example: ["198.51.100.53"], office.com: ["198.51.100.54"]}}
        breakout: {{interface: wan0, resolvers: ["203.0.113.53"]}}
        """,
    )
    names = ["outlook.office365.com", "intranet.corp.example", "x.office.com", "example.com"]
    code, out, err = run_explain(["explain", "--config", config, "--json", *names], capsys)
    assert (code, err) == (0, "")
    assert [item["upstream"] for item in json.loads(out)] == [
        "breakout",  # a policy name: the ISP's resolvers
        "zone:corp.example",
        "zone:office.com",  # a zone beats the policy
        "default",
    ]
    code, out, _ = run_explain(["explain", "--config", config, *names], capsys)
    lines = out.splitlines()
    assert lines[0].endswith("upstream: breakout") and lines[3].endswith("upstream: default")
    # Without zones or resolvers everything goes to the default upstreams: nothing to show.
    plain = write_config(tmp_path, f"state_dir: {tmp_path}/state\n")
    code, out, _ = run_explain(["explain", "--config", plain, "outlook.office365.com"], capsys)
    assert "upstream" not in out
    code, out, _ = run_explain(["explain", "--config", plain, "--json", "example.com"], capsys)
    assert "upstream" not in json.loads(out)[0]
