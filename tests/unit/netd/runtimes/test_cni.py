"""netd-cni's parsing and results (the protocol against netd: tests/functional)."""

from __future__ import annotations

import io
import json

import pytest

from netd.runtimes import cni


def test_cni_args_as_podman_sends_them() -> None:
    args = cni.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=web;"
                              "MAC=02:00:00:00:00:0A;IP=10.81.0.10")
    assert args["IP"] == "10.81.0.10"
    assert cni.endpoint_name(args, "abcdef0123456789", "h1") == "web.h1"
    assert cni.requested({}, args) == ("10.81.0.10", "02:00:00:00:00:0a")
    with pytest.raises(cni.CniError):
        cni.parse_cni_args("novalue")


def test_names_and_requests_from_elsewhere() -> None:
    assert cni.endpoint_name({}, "abcdef0123456789") == "cni-abcdef012345"
    assert cni.endpoint_name({"K8S_POD_NAME": "api", "K8S_POD_NAMESPACE": "prod"}, "x") == \
        "prod.api"
    config = {"runtimeConfig": {"ips": ["10.1.0.5/24"], "mac": "02:00:00:00:00:01"}}
    assert cni.requested(config, {}) == ("10.1.0.5", "02:00:00:00:00:01")
    assert cni.requested({"args": {"cni": {"ips": ["10.1.0.6"]}}}, {}) == ("10.1.0.6", None)
    with pytest.raises(cni.CniError, match="IPv4 only"):
        cni.requested({}, {"IP": "fd00::1"})


def test_result_shapes() -> None:
    endpoint = {"ifname": "eth0", "mac": "02:00:00:00:00:01", "ip": "10.1.0.5"}
    network = {"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}
    result = cni.build_result("1.0.0", endpoint, network, "/run/netns/x")
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
        "dns": {},
    }
    old = cni.build_result("0.4.0", endpoint, network, "/run/netns/x")
    assert old["ips"][0]["version"] == "4"
    prev = {"interfaces": [{"name": "lo"}], "ips": [], "routes": []}
    chained = cni.build_result("1.0.0", endpoint, network, "/run/netns/x", prev)
    assert chained["ips"][0]["interface"] == 1


def test_version_and_errors_without_netd() -> None:
    out = io.StringIO()
    assert cni.run({"CNI_COMMAND": "VERSION"}, io.StringIO(""), out) == 0
    assert "1.0.0" in json.loads(out.getvalue())["supportedVersions"]
    with pytest.raises(cni.CniError) as bad:
        cni.run({"CNI_COMMAND": "ADD"}, io.StringIO("[1]"), io.StringIO())
    assert bad.value.code == cni.DECODE_FAILURE
    with pytest.raises(cni.CniError) as old:
        cni.run({"CNI_COMMAND": "ADD"}, io.StringIO('{"cniVersion": "0.2.0", "name": "n"}'),
                io.StringIO())
    assert old.value.code == cni.INCOMPATIBLE_VERSION
    error = cni.error_result(cni.ApiError("netd is not reachable", 0), "1.0.0")
    assert error["code"] == cni.TRY_AGAIN_LATER
    refused = cni.error_result(cni.ApiError("IP taken", 409, "conflict"), "1.0.0")
    assert refused == {"cniVersion": "1.0.0", "code": cni.NETD_REFUSED, "msg": "IP taken",
                       "details": "netd error conflict (HTTP 409)"}
