"""A host's gateway plan as frozen dataclasses (compared by value: equal needs no apply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayPort:
    """One network's gateway on this host: a veth from the network's bridge into the
    tenant's router namespace, the gateway address on its router end."""

    network: str
    bridge: str  # the network's bridge (the driver's)
    host_link: str  # the veth's end on the bridge
    router_link: str  # its end in the router namespace
    gateway: str
    prefixlen: int
    subnet: str
    mac: str  # this host's gateway MAC on the network
    mtu: int
    tunnels: tuple[str, ...]  # the bridge's overlay ports: no ARP for the gateway crosses
    neighbours: tuple[tuple[str, str], ...]  # every endpoint (ip, mac), sorted
    egress: bool  # containers may open connections beyond the network
    masquerade: bool  # their sources become the router's (then the host's) address
    exposed: bool  # this host routes outside traffic for the subnet into it
    # other hosts exposing the network: (mark id, their gateway MAC); replies of
    # connections that came in through one of them go back to it
    exposers: tuple[tuple[int, str], ...] = ()
    container_prefix: str = ""  # the driver's container port names start with this


@dataclass(frozen=True)
class Forward:
    """A published host port: DNAT on the host to the router, on the router to the
    endpoint."""

    protocol: str
    host_port: int
    ip: str
    port: int
    network: str
    endpoint: str


@dataclass(frozen=True)
class Router:
    tenant: str
    netns: str  # name under /run/netns
    uplink: str  # host end of the uplink veth
    uplink_mac: str
    host_ip: str  # transfer /30: the host end
    router_ip: str  # transfer /30: the router end
    ports: tuple[GatewayPort, ...]
    forwards: tuple[Forward, ...] = ()

    @property
    def exposed(self) -> tuple[str, ...]:
        return tuple(p.subnet for p in self.ports if p.exposed)


@dataclass(frozen=True)
class RoutedNetwork:
    """A network whose containers the host itself routes (flannel: its bridge holds this
    host's lease gateway): egress, expose and publish are rules of the host's table."""

    network: str
    subnet: str
    bridge: str
    egress: bool
    masquerade: bool
    exposed: bool
    tunnels: tuple[str, ...] = ()  # its overlay devices: exposing hosts' traffic comes by them
    tenant: str = ""  # its tenant's other routed networks are reached as inside, not outside


@dataclass(frozen=True)
class GatewayPlan:
    underlay_ip: str
    routers: tuple[Router, ...] = ()
    routed: tuple[RoutedNetwork, ...] = ()
    forwards: tuple[Forward, ...] = ()  # published ports of routed networks' containers

    @property
    def empty(self) -> bool:
        return not self.routers and not self.routed
