"""`GET /v1/trace`: the desired-state trace of a flow (netd.trace) from this daemon's
copy of the store plus the store's security groups, checked against this host's kernel
(netd.trace_kernel)."""

from __future__ import annotations

from typing import Any

from netd import trace as tracing
from netd import trace_kernel
from netd.errors import InvalidInput
from netd.service import Service


def trace_flow(service: Service, query: dict[str, str]) -> dict[str, Any]:
    src, dst = query.get("src"), query.get("dst")
    if not src or not dst:
        raise InvalidInput("trace needs src and dst: endpoint names or addresses")
    flow = tracing.Flow.parse(query.get("proto"), query.get("port"))
    snapshot = service.reconciler.snapshot()
    groups = {(g.tenant, g.name): g for g in service.list_groups(None)}
    result = tracing.trace(snapshot.networks, snapshot.endpoints.values(), snapshot.hosts,
                           groups, src, dst, flow)
    return {**result.to_dict(), "kernel": trace_kernel.check(result, service.host.name)}
