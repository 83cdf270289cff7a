"""Routed traffic between tenants (flannel hosts forward between every network they
serve): netd's inet table drops it per bridge by address, only when two tenants meet."""

from __future__ import annotations

from netd.policy.model import HostPolicy, PortPolicy
from netd.policy.nft import render


def port(name: str, tenant: str, bridge: str, subnet: str) -> PortPolicy:
    return PortPolicy(network=name, endpoint="e", tenant=tenant, driver="flannel",
                      link=f"ndflh{name}", bridge=bridge, ip=subnet.split("/")[0][:-1] + "5",
                      mac="02:00:00:00:00:01", subnet=subnet)


def test_one_tenant_adds_no_rules_and_two_drop_each_others_subnets() -> None:
    red = port("red", "r", "ndflb1", "10.64.0.0/16")
    pink = port("pink", "r", "ndflb2", "10.65.0.0/16")
    blue = port("blue", "b", "ndflb3", "10.66.0.0/16")
    alone = render(HostPolicy(ports=(red, pink)), ["flannel"]).skeleton
    assert "10.66" not in alone and "ip daddr !=" not in alone
    both = render(HostPolicy(ports=(red, pink, blue)), ["flannel"]).skeleton
    assert ('iifname "ndflb1" ip daddr != { 10.64.0.0/16, 10.65.0.0/16 } '
            'ip daddr { 10.66.0.0/16 } drop') in both
    assert ('oifname "ndflb3" ip saddr != { 10.66.0.0/16 } '
            'ip saddr { 10.64.0.0/16, 10.65.0.0/16 } drop') in both
