"""`netd --metrics`: a real daemon's scrape endpoint, parsed with prometheus-client's own
parser; its counters move with attaches, refusals and store errors."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netd.lab import Lab, ns_exec

pytestmark = pytest.mark.root

ADDRESS = "127.0.0.1:9464"
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], " \
        "timeout=10).read().decode())"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=0, store="etcd") as lab:
        host = lab.add_host("h1")
        host.extra_args = ["--metrics", ADDRESS]
        lab.start_netd("h1")
        lab.netctl("h1", "network", "create", "mx", "--subnet", "10.78.0.0/24")
        yield lab


def scrape(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = subprocess.run(
        ns_exec(lab.hosts["h1"].netns, "/usr/bin/python3", "-c", FETCH,
                f"http://{ADDRESS}/metrics"),
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_attaches_and_refusals_move_the_request_counters(lab: Lab) -> None:
    before = scrape(lab)
    attach = {"method": "POST", "route": "/v1/attach"}
    for i in range(3):
        lab.netctl("h1", "attach", lab.add_container("h1", f"m{i}"), "--network", "mx")
    refused = lab.netctl("h1", "attach", "no-such-container", "--network", "mx", check=False)
    assert refused.returncode != 0
    after = scrape(lab)
    ok = "netd_api_requests_total"
    assert value(after, ok, **attach, code="200") - value(before, ok, **attach, code="200") == 3
    assert value(after, ok, **attach, code="404") - value(before, ok, **attach, code="404") == 1
    assert value(after, "netd_endpoints", network="mx") == 3
    assert value(after, "netd_ipam_addresses_used", network="mx") == 3
    assert value(after, "netd_ipam_addresses", network="mx") == 253  # /24 less the gateway
    assert value(after, "netd_worker_items_failed", driver="weave") == 0
    assert value(after, "netd_store_watch_up") == 1
    applies = "netd_reconcile_duration_seconds_count"
    assert value(after, applies, driver="weave") > value(before, applies, driver="weave")
    commits = "netd_store_request_duration_seconds_count"
    assert value(after, commits, op="commit") >= value(before, commits, op="commit") + 3


def test_store_errors_are_counted(lab: Lab) -> None:
    before = scrape(lab)
    member = lab.etcd_members[0].name
    lab.stop_etcd(member)
    try:
        result = lab.netctl("h1", "network", "create", "mx2", "--subnet", "10.79.0.0/24",
                            check=False)
        assert result.returncode != 0
        during = scrape(lab)
    finally:
        lab.start_etcd(member)
    errors = sum(v for (name, _), v in during.items() if name == "netd_store_request_errors_total")
    errors_before = sum(v for (name, _), v in before.items()
                        if name == "netd_store_request_errors_total")
    assert errors > errors_before
    assert value(during, "netd_store_watch_up") == 0
