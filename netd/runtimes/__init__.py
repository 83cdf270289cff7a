"""Container runtimes on netd: a Docker remote network + IPAM plugin, a CNI plugin.

Both are clients of the local netd's socket API (netd.api): a runtime's "connect this
container" becomes an attach, its "disconnect" a detach, so addresses, MACs and the
datapath stay netd's business and every driver works unchanged. See docs/runtimes.md.
"""
