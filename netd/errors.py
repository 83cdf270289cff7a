"""Exceptions a user can act on.

Every error netd raises on purpose derives from NetdError and carries a message that
says what was wrong and what to do. The API maps the classes to HTTP status codes in
one place (netd.api.STATUS_BY_ERROR); the CLI prints the message as one line.
"""

from __future__ import annotations


class NetdError(Exception):
    """Base of all deliberate netd errors."""

    code = "error"


class InvalidInput(NetdError):
    """The request itself is wrong (bad CIDR, IP outside the subnet, bad name...)."""

    code = "invalid"


class NotFound(NetdError):
    """A named object (network, endpoint, container, security group) does not exist."""

    code = "not_found"


class Conflict(NetdError):
    """The request clashes with existing state (duplicate name, address in use...)."""

    code = "conflict"


class Contention(Conflict):
    """Concurrent writers kept changing what a request depends on, past the retry
    bound: nothing was written; the same request may succeed when tried again."""

    code = "contention"


class HostLimit(NetdError):
    """This host cannot carry the request (its underlay MTU is too small for the
    network): another host may, or this one after its configuration changes."""

    code = "host_limit"


class Exhausted(NetdError):
    """A pool (addresses, VNIs) has nothing left to hand out."""

    code = "exhausted"


class StoreUnavailable(NetdError):
    """The store (etcd or the embedded SQLite file) cannot be reached."""

    code = "store_unavailable"


class Compacted(NetdError):
    """A watch asked for a revision the store no longer keeps; the caller must re-list."""

    code = "compacted"

    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class DatapathError(NetdError):
    """The kernel (netlink, nftables, OVS) refused a change."""

    code = "datapath"


class Unsupported(NetdError):
    """This netd or machine lacks what the request needs (a driver, a kernel feature,
    a feature not built yet such as security groups)."""

    code = "unsupported"
