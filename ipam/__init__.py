"""IPAM: cluster-wide address management for netd networks, kept in the store.

Everything here plans (conditions and operations) and never commits: the service
commits the plans together with its own records through netd.service.transaction.
`scope` is the range to allocate in (a network's subnet, or a driver's per-host part of
it); `allocator` the pure policy (which address to try next); `pool` applies it to one
range's records; `macs` the per-network MAC claims; `ids` small numeric ids (VNIs).
"""

from ipam.allocator import candidates, usable_count
from ipam.pool import AddressPool, Plan
from ipam.scope import AddressRange

__all__ = ["AddressPool", "AddressRange", "Plan", "candidates", "usable_count"]
