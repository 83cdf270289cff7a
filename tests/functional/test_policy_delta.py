"""The incremental nftables path against the kernel: after every step of a random
sequence of policy changes (ports, groups, rules, members on other hosts), the tables
a delta transaction left equal those a whole replace of the same policy leaves.

Runs the applier in a netns of its own (a child process: netd never switches its own
netns) through the real libnftables context.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import pytest

from tests.functional.conftest import in_netns

pytestmark = [pytest.mark.root]

SCRIPT = r'''
import json, random, sys
import plugins.weave.names
from netd.model import Endpoint, Network, SecurityGroup, SecurityGroupRule
from netd.policy.compute import PolicyIndex
from netd.policy.nft import NftApplier

def listing(applier):
    out = json.loads(applier._context().run("list ruleset", json_output=True))
    chains, elems = {}, {}
    for item in out["nftables"]:
        ((kind, body),) = item.items()
        if kind in ("metainfo", "table"):
            continue
        if kind == "rule":
            expr = json.dumps(body["expr"], sort_keys=True)
            chains.setdefault((body["family"], body["chain"]), []).append(expr)
        elif kind == "chain":
            chains.setdefault((body["family"], body["name"]), [])
        elif kind in ("set", "map"):
            elems[(body["family"], body["name"])] = sorted(
                json.dumps(e, sort_keys=True) for e in body.get("elem", []))
    return {"chains": sorted(chains.items()), "elements": sorted(elems.items())}

rnd = random.Random(int(sys.argv[1]))
index = PolicyIndex()
for name, vni in (("blue", 5), ("green", 6)):
    index.put_network(Network(name, f"10.{vni}.0.0/24", f"10.{vni}.0.1", vni, 1450))
applier = NftApplier(["weave"])
applier.setup()
checked = 0
for step in range(int(sys.argv[2])):
    what = rnd.random()
    net = rnd.choice(("blue", "green"))
    vni = 5 if net == "blue" else 6
    name = rnd.choice("abcdef")
    if what < 0.5:
        last = "abcdef".index(name) + 2  # IPAM: one address per endpoint of a network
        index.put_endpoint(Endpoint(net, name, name, "/run/netns/x", rnd.choice(("h1", "h2")),
                                    "eth0", f"10.{vni}.0.{last}", f"02:42:0a:0{vni}:00:{last:02x}",
                                    tuple(rnd.sample(("web", "db"), rnd.randint(0, 2)))))
    elif what < 0.7:
        index.drop_endpoint(net, name)
    else:
        group = rnd.choice(("web", "db"))
        rules = tuple(SecurityGroupRule(f"0000000{i}", rnd.choice(("ingress", "egress")), "tcp",
                                        80 + i, 80 + i, None, rnd.choice(("web", "db")))
                      for i in range(rnd.randint(0, 2)))
        index.put_group("default", group, SecurityGroup(group, "default", rules))
    policy = index.policy("h1")
    applier.apply(policy)
    after_delta = listing(applier)
    applier.apply(policy, verify=True)
    if listing(applier) != after_delta:
        print(json.dumps({"step": step, "delta": after_delta, "full": listing(applier)}))
        sys.exit(1)
    checked += 1
print(json.dumps({"checked": checked}))
'''


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_delta_transactions_leave_what_a_whole_replace_leaves(
        make_netns: Callable[[str], str], seed: int) -> None:
    ns = make_netns("pdelta")
    result = in_netns(ns, sys.executable, "-c", SCRIPT, str(seed), "60", check=False)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"checked": 60}
