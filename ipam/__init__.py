"""IPAM: cluster-wide address management for netd networks, kept in the store.

`allocator` is the pure policy (which address to try next); `pool` applies it to one
network's records in the store, atomically and race-free across daemons.
"""

from ipam.allocator import candidates, usable_count
from ipam.pool import AddressPool, Plan

__all__ = ["AddressPool", "Plan", "candidates", "usable_count"]
