"""The private-OVS lab for tests (it lives in plugins.openflow.lab so `netctl demo` and
the benchmarks can use it from an installed netd)."""

from plugins.openflow.lab import SCHEMA, UNDERLAY_BRIDGE, HostOvs, OvsLab, ovs_available

__all__ = ["SCHEMA", "UNDERLAY_BRIDGE", "HostOvs", "OvsLab", "ovs_available"]
