"""netctl's sg commands: what they send and how they print (no daemon)."""

from __future__ import annotations

from typing import Any

import pytest

from netd import cli


class Recorder:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sent: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, body: Any = None) -> Any:
        self.sent.append((method, path, body))
        return self.answer


RULE = {"id": "0123abcd", "direction": "ingress", "protocol": "tcp", "port_min": 80,
        "port_max": 90, "cidr": None, "group": "web"}


def run(argv: list[str], answer: Any) -> tuple[Recorder, str]:
    args = cli.build_parser().parse_args(argv)
    client = Recorder(answer)
    value, render = args.run(client, args)
    return client, render(value)


def test_rule_add_sends_the_rule_to_the_tenant_group() -> None:
    client, text = run(["sg", "rule", "add", "web", "--ingress", "--proto", "tcp", "--port",
                        "80-90", "--group", "web", "--tenant", "acme"],
                       {"group": "web", "tenant": "acme", "rule": RULE, "added": True})
    assert client.sent == [("POST", "/v1/sg/web/rules?tenant=acme", {
        "direction": "ingress", "protocol": "tcp", "port": "80-90", "group": "web"})]
    assert text == "rule added to web: 0123abcd  ingress tcp ports 80-90 from/to group web"


def test_inspect_and_ls_print_rules_and_members() -> None:
    group = {"name": "web", "tenant": "default", "rules": [RULE], "members": []}
    client, text = run(["sg", "inspect", "web"], group)
    assert client.sent == [("GET", "/v1/sg/web", None)]
    assert "0123abcd  ingress tcp ports 80-90" in text and "members:\n  (none)" in text
    _, listed = run(["sg", "ls"], [group])
    assert listed.splitlines()[1].split() == ["web", "default", "1"]


def test_endpoint_update_without_sg_clears_the_groups() -> None:
    answer = {"name": "c1", "network": "blue", "security_groups": []}
    client, text = run(["endpoint", "update", "c1", "--network", "blue"], answer)
    assert client.sent == [("POST", "/v1/endpoints/update",
                            {"container": "c1", "network": "blue", "sg": []})]
    assert text == "c1 on blue: security groups (none)"


def test_a_rule_needs_a_direction_and_one_remote() -> None:
    for argv in (["sg", "rule", "add", "web", "--cidr", "10.0.0.0/8"],
                 ["sg", "rule", "add", "web", "--ingress"],
                 ["sg", "rule", "add", "web", "--ingress", "--cidr", "10.0.0.0/8",
                  "--group", "x"]):
        with pytest.raises(SystemExit):
            cli._parse(argv)
