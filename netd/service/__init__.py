"""What the API does: validate, write desired state to the store, wait for this host.

Split by resource - `networks`, `endpoints`, `groups` (security groups, scoped by
tenant), `status` - over one shared `context` and one way to write, `transaction`:
every write is a conditional commit, planned again (a bounded number of times) when a
condition failed, after asking which one failed. Each operation validates everything
before it writes (JSON types strictly, the network's driver loaded here, its MTU
fitting this host's underlay), so a refused or raced request changes nothing; those
that touch this host's datapath wait until the reconciler applied the change and roll
the store back exactly if the driver failed the item. Attaches and detaches of one
container run one at a time. The HTTP layer (netd.api) only maps requests and errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from netd import netlink
from netd.container import ContainerRef, resolve
from netd.events import EventBus
from netd.hosts import HostRegistration
from netd.model import Endpoint, Host, Network, SecurityGroup
from netd.plugin import DriverSpec, NetworkHooks
from netd.reconcile import Reconciler
from netd.service.context import Context
from netd.service.endpoints import Endpoints
from netd.service.gateway import Gateway
from netd.service.groups import Groups
from netd.service.networks import Networks
from netd.service.status import PeerHealth, Status
from netd.store.base import Store
from netd.store.keys import Keys

__all__ = ["Service"]


class Service:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        registration: HostRegistration,
        reconciler: Reconciler,
        drivers: Mapping[str, DriverSpec],
        *,
        containers: Callable[[str], ContainerRef] = resolve,
        links: Callable[[str], set[str]] = netlink.link_names,
        hooks: Mapping[str, NetworkHooks] | None = None,
        health: PeerHealth | None = None,
        events: EventBus | None = None,
    ) -> None:
        """`drivers`: the specs of the drivers this daemon loaded, by name (networks of
        other drivers are refused). `containers` and `links` resolve references and read a
        netns's interface names (tests fake them). `hooks`: drivers implementing
        NetworkHooks (per-host address ranges, foreign network configs). `health`: the
        per-peer prober (netd.health), whose view `host ls` and `status` show. `events`:
        the daemon's event bus (netd.events), read by `netctl events`."""
        self.ctx = Context(store, keys, registration, reconciler, drivers, containers, links,
                           hooks)
        self.networks = Networks(self.ctx)
        self.endpoints = Endpoints(self.ctx)
        self.statuses = Status(self.ctx, health)
        self.events = events or EventBus()
        self.groups = Groups(self.ctx)
        self.gateway = Gateway(self.ctx)

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def keys(self) -> Keys:
        return self.ctx.keys

    @property
    def reconciler(self) -> Reconciler:
        return self.ctx.reconciler

    @property
    def registration(self) -> HostRegistration:
        return self.ctx.registration

    @property
    def drivers(self) -> frozenset[str]:
        return self.ctx.drivers

    @property
    def specs(self) -> dict[str, DriverSpec]:
        return self.ctx.specs

    @property
    def host(self) -> Host:
        return self.ctx.host

    # networks
    def create_network(self, request: dict[str, Any]) -> Network:
        self.ctx.refuse_while_store_down("network create")
        return self.networks.create_network(request)

    def get_network(self, name: str) -> Network:
        return self.networks.get_network(name)

    def list_networks(self) -> list[Network]:
        return self.networks.list_networks()

    def inspect_network(self, name: str) -> dict[str, Any]:
        value = self.networks.inspect_network(name)
        value["exposed_by"] = [
            {"host": r.host, "masquerade": "no-masquerade" not in r.roles}
            for r in self.gateway.exposures(name)]
        return value

    def remove_network(self, name: str) -> None:
        self.ctx.refuse_while_store_down("network rm")
        self.networks.remove_network(name)

    # endpoints
    def list_endpoints(self, network: str | None = None) -> list[Endpoint]:
        return self.networks.list_endpoints(network)

    def attach(self, request: dict[str, Any]) -> Endpoint:
        self.ctx.refuse_while_store_down("attach")
        return self.endpoints.attach(request)

    def detach(self, request: dict[str, Any], wait: bool = True) -> Endpoint:
        self.ctx.refuse_while_store_down("detach")
        return self.endpoints.detach(request, wait)

    def update_endpoint(self, request: dict[str, Any]) -> Endpoint:
        self.ctx.refuse_while_store_down("endpoint update")
        return self.endpoints.update(request)

    # security groups
    def create_group(self, request: dict[str, Any]) -> SecurityGroup:
        self.ctx.refuse_while_store_down("sg create")
        return self.groups.create_group(request)

    def list_groups(self, tenant: str | None = None) -> list[SecurityGroup]:
        return self.groups.list_groups(tenant)

    def inspect_group(self, tenant: str | None, name: str) -> dict[str, Any]:
        return self.groups.inspect_group(tenant, name)

    def remove_group(self, tenant: str | None, name: str) -> None:
        self.ctx.refuse_while_store_down("sg rm")
        self.groups.remove_group(tenant, name)

    def add_rule(self, tenant: str | None, name: str, request: dict[str, Any]) -> dict[str, Any]:
        self.ctx.refuse_while_store_down("sg rule add")
        return self.groups.add_rule(tenant, name, request)

    def remove_rule(self, tenant: str | None, name: str, rule_id: str) -> dict[str, Any]:
        self.ctx.refuse_while_store_down("sg rule rm")
        return self.groups.remove_rule(tenant, name, rule_id)

    # gateway: expose/hide, publish/unpublish (netd.service.gateway)
    def expose(self, request: dict[str, Any]) -> dict[str, Any]:
        self.ctx.refuse_while_store_down("expose")
        return self.gateway.expose(request)

    def hide(self, request: dict[str, Any]) -> dict[str, Any]:
        self.ctx.refuse_while_store_down("hide")
        return self.gateway.hide(request)

    def publish(self, request: dict[str, Any]) -> dict[str, Any]:
        self.ctx.refuse_while_store_down("publish")
        return self.gateway.publish(request)

    def unpublish(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        self.ctx.refuse_while_store_down("unpublish")
        return self.gateway.unpublish(request)

    def endpoints_with_ports(self, network: str | None = None) -> list[dict[str, Any]]:
        """`endpoint ls`: each endpoint, with the host ports published to it if any (an
        endpoint without is the plain record)."""
        ports: dict[tuple[str, str], list[str]] = {}
        for p in self.gateway.published(network):
            ports.setdefault((p.network, p.endpoint), []).append(
                f"{p.host_port}:{p.port}/{p.protocol}")
        out = []
        for e in self.list_endpoints(network):
            item = e.to_dict()
            if (e.network, e.name) in ports:
                item["published"] = ports[(e.network, e.name)]
            out.append(item)
        return out

    # hosts and status
    def list_hosts(self) -> list[dict[str, Any]]:
        return self.statuses.list_hosts()

    def status(self) -> dict[str, Any]:
        value = self.statuses.status()
        value["gateway"] = self.gateway_status()
        return value

    def gateway_status(self) -> dict[str, Any]:
        """What this host exposes and publishes and its routers, as its gateway plans
        them from the local copy of the store (answered while the store is down)."""
        worker = getattr(self.reconciler, "gateway", lambda: None)()
        plan = worker.plan() if worker is not None else None
        routers = plan.routers if plan is not None else ()
        exposes = [{"network": p.network, "masquerade": p.masquerade}
                   for r in routers for p in r.ports if p.exposed]
        exposes += [{"network": n.network, "masquerade": n.masquerade}
                    for n in (plan.routed if plan is not None else ()) if n.exposed]
        forwards = [f for r in routers for f in r.forwards]
        forwards += plan.forwards if plan is not None else ()
        published = [{"host": self.host.name, "protocol": f.protocol, "host_port": f.host_port,
                      "network": f.network, "endpoint": f.endpoint, "port": f.port}
                     for f in forwards]
        routers_out = [{"tenant": r.tenant, "netns": r.netns, "address": r.router_ip,
                        "networks": [p.network for p in r.ports]} for r in routers]
        return {"exposes": exposes, "published": published, "routers": routers_out}
