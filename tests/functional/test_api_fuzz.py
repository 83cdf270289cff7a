"""The socket API fuzzed from its own OpenAPI document (schemathesis strategies, sent to a
real netd over its unix socket): no 5xx, the daemon stays up, and a refused request
(4xx) changes nothing — in the store (networks, endpoints) or in the host's links."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from importlib.resources import files
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.openapi import from_path

from netd.cli import Client, _UnixConnection
from netd.lab import Lab, ns_exec

pytestmark = pytest.mark.root

SCHEMA = from_path(str(files("netd").joinpath("openapi.json")))
# GET /v1/events long-polls: a case may rightly wait up to its `wait` (30 s) for an
# event, which would make this test take hours; its refusals are tested in test_events.py
NOT_FUZZED = {("GET", "/v1/events")}
OPERATIONS = [op for op in (result.ok() for result in SCHEMA.get_all_operations())
              if (op.method.upper(), op.path) not in NOT_FUZZED]
EXAMPLES_PER_OPERATION = 40


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=1, store="embedded") as lab:
        lab.netctl("h1", "network", "create", "fz", "--subnet", "10.77.0.0/24")
        container = lab.add_container("h1", "fz1")
        lab.netctl("h1", "attach", container, "--network", "fz")
        yield lab


def send(lab: Lab, case: Any) -> tuple[int, Any]:
    kwargs = case.as_transport_kwargs(base_url="http://netd")
    url = urlsplit(kwargs["url"])
    target = url.path + ("?" + urlencode(kwargs["params"]) if kwargs.get("params") else "")
    body = json.dumps(kwargs["json"]) if "json" in kwargs else kwargs.get("data")
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() != "connection"}
    conn = _UnixConnection(str(lab.hosts["h1"].socket), 30)
    try:
        conn.request(kwargs["method"], target, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(data) if data else None


def snapshot(lab: Lab) -> tuple[Any, Any, str]:
    links = subprocess.run(ns_exec(lab.hosts["h1"].netns, "ip", "-o", "link"),
                           capture_output=True, text=True, check=True).stdout
    names = " ".join(sorted(line.split(":")[1].strip() for line in links.splitlines()))
    client = Client(lab.hosts["h1"].socket)
    return client.request("GET", "/v1/networks"), client.request("GET", "/v1/endpoints"), names


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: f"{op.method} {op.path}")
def test_no_server_error_and_no_change_on_refusal(lab: Lab, operation: Any) -> None:
    modes = st.sampled_from(list(schemathesis.GenerationMode))
    cases = modes.flatmap(lambda mode: operation.as_strategy(generation_mode=mode))

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case: Any) -> None:
        before = snapshot(lab) if operation.method.upper() != "GET" else None
        status, body = send(lab, case)
        assert status < 500, (case.as_curl_command(), body)
        if status >= 400:
            assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
            if before is not None:
                assert snapshot(lab) == before, case.as_curl_command()

    check()
    host = lab.hosts["h1"]
    assert host.proc is not None and host.proc.poll() is None
