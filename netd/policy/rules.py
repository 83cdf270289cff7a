"""Security groups and rules from user input: validated here, stored as netd.model's
SecurityGroup / SecurityGroupRule.

A rule's id is a hash of what it says, so adding the same rule twice gives the same id
(the second add is a no-op) and a rule can be named by `sg rule rm GROUP ID` on any host.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import netaddr

from netd.errors import InvalidInput
from netd.model import DEFAULT_TENANT, SecurityGroupRule, check_int, check_name, check_str

PROTOCOLS = ("tcp", "udp", "icmp", "any")
DIRECTIONS = ("ingress", "egress")


def parse_ports(value: Any) -> tuple[int | None, int | None]:
    """"80" or "8000-8080" (or an int) -> (min, max); None -> (None, None)."""
    if value is None or value == "":
        return None, None
    if isinstance(value, bool):
        raise InvalidInput(f"invalid port {value!r}: expected N or N-M")
    text = str(value).strip()
    low, sep, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise InvalidInput(f"invalid port {value!r}: expected N or N-M (1-65535)") from None
    if not 1 <= first <= last <= 65535:
        raise InvalidInput(f"invalid port range {value!r}: need 1 <= N <= M <= 65535")
    return first, last


def check_cidr(value: Any) -> str:
    text = check_str(value, "remote CIDR")
    try:
        net = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidInput(f"invalid remote CIDR {value!r}: expected e.g. 10.1.0.0/24") from None
    if net.version != 4:
        raise InvalidInput(f"invalid remote CIDR {value!r}: only IPv4 is supported")
    if "/" in text and net.ip != net.network:
        raise InvalidInput(f"invalid remote CIDR {value!r}: host bits set, "
                           f"did you mean {net.cidr}?")
    return str(net.cidr)


def rule_id(direction: str, protocol: str, port_min: int | None, port_max: int | None,
            cidr: str | None, group: str | None) -> str:
    body = json.dumps([direction, protocol, port_min, port_max, cidr, group])
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def validate_rule(request: dict[str, Any]) -> SecurityGroupRule:
    """A rule from `sg rule add` fields: direction, protocol, port, cidr | group."""
    direction = request.get("direction")
    if direction not in DIRECTIONS:
        raise InvalidInput(f"invalid direction {direction!r}: give --ingress or --egress")
    protocol = request.get("protocol") or "any"
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"invalid protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    port_min, port_max = parse_ports(request.get("port"))
    if port_min is not None and protocol not in ("tcp", "udp"):
        raise InvalidInput(f"--port needs --proto tcp or udp (not {protocol})")
    cidr, group = request.get("cidr"), request.get("group")
    if (cidr is None) == (group is None):
        raise InvalidInput("a rule needs exactly one remote: --cidr CIDR or --group GROUP")
    cidr = check_cidr(cidr) if cidr is not None else None
    group = check_name(group, "security group name") if group is not None else None
    return SecurityGroupRule(
        id=rule_id(direction, protocol, port_min, port_max, cidr, group),
        direction=direction, protocol=protocol, port_min=port_min, port_max=port_max,
        cidr=cidr, group=group,
    )


def check_tenant(value: Any) -> str:
    return check_name(value or DEFAULT_TENANT, "tenant name")


def check_rule_id(value: Any) -> str:
    text = check_str(value, "rule id")
    if len(text) != 8 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidInput(f"invalid rule id {value!r}: 8 hex digits, as `sg inspect` shows")
    return text


__all__ = ["check_cidr", "check_int", "check_rule_id", "check_tenant", "parse_ports",
           "rule_id", "validate_rule"]
