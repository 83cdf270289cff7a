"""The distributed gateway: each host serving a network is its gateway for local
containers (egress, expose, publish), in per-tenant router namespaces.

`compute` is pure (store records + this host -> GatewayPlan), `nft` renders netd's NAT
and filter rules for it, `apply` makes the kernel match a plan idempotently, and
`worker` runs that on its own thread. docs/gateway.md has the design and why.
"""
