"""One address range's pool in the store: cluster-wide, race-free, sticky by name.

Two records per allocation (keys from netd.store.keys):
* `Keys.ipam_address(net, ip)` = {"owner": endpoint}: the address is in use;
* `Keys.ipam_name(net, endpoint)` = {"ip": ip}: the endpoint name's sticky reservation.

The pool only plans: `plan_*` return a `Plan` (conditions and operations) and never
write. The caller adds its own records and commits everything at once through the
transaction helper (netd.service.transaction), so an attach reserves its address,
claims its MAC and writes its endpoint in one transaction: the address must be absent,
the name record unchanged since it was read. That is the only way addresses are taken,
in production, tests and benchmarks alike.

Keep one AddressPool per range for the daemon's lifetime: it keeps a short-lived view
of the range's records so that an automatic pick costs no read (see _View), and the
caller tells it what happened (`committed`, `collided`, `invalidate`).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass

from ipam.allocator import Occupancy
from ipam.scope import AddressRange
from netd.errors import Conflict, Exhausted
from netd.model import check_name
from netd.store.base import Condition, Delete, DeletePrefix, KeyValue, Operation, Put, Store
from netd.store.keys import Keys

# The view is advice (the commit's conditions decide), so keeping it fresh is a matter of
# cost: a re-read costs O(records) (etcd here: ~3 ms of its CPU for 2000 records, plus
# the client's decoding), a pick that collided costs one lost commit, about as much as
# reading RECORDS_PER_COLLISION records. So while picks keep coming the view is re-read
# when its collisions have cost about what a re-read costs (at least
# COLLISIONS_BEFORE_REREAD of them) or when it claims the pool is full; the first pick
# after VIEW_IDLE seconds without one, or any pick once the view is VIEW_MAX_AGE old,
# re-reads it (what others freed and reserved since is learnt there).
VIEW_IDLE = 2.0
VIEW_MAX_AGE = 30.0
RECORDS_PER_COLLISION = 200
COLLISIONS_BEFORE_REREAD = 2
# Each daemon picks at random inside a window of its own (WINDOW addresses from a random
# start, moved to wherever a pick found room once the window is full), in ranges of at
# least MIN_WINDOWS windows: several daemons allocating at once then rarely try the same
# address even with views a few hundred allocations old (block affinity, as Calico's
# IPAM does). Smaller ranges are picked from whole.
WINDOW = 64
MIN_WINDOWS = 16


@dataclass(frozen=True)
class Plan:
    """A transaction not yet committed: apply all `operations` if all `conditions` hold."""

    ip: str  # the reserved address ("" for release plans)
    conditions: tuple[Condition, ...] = ()
    operations: tuple[Operation, ...] = ()
    # reserve plans: the endpoint's sticky address before (None: it had no record), so
    # a failed caller can put the name record back as it was (plan_undo)
    previous_sticky: str | None = None
    automatic: bool = False  # the address was picked, not asked for


@dataclass(frozen=True)
class _Record:
    value: str
    mod_revision: int


class _View:
    """What the pool looked like a moment ago, so an automatic pick needs no read.

    Reading every record of a big network for each allocation makes allocation O(n).
    The view is only advice: the commit's conditions decide. When it is re-read is a
    matter of cost (see VIEW_IDLE and RECORDS_PER_COLLISION above). Each pick is marked
    in use at once, so a lost commit moves on, and the caller's own commits are written
    into it (`committed`).
    """

    def __init__(self, scope: AddressRange, owners: dict[str, _Record],
                 sticky: dict[str, _Record], revision: int) -> None:
        self.owners = owners  # ip -> owning endpoint
        self.sticky = sticky  # endpoint -> its sticky ip
        # an endpoint's own sticky address is taken before a pick (or is in use), so
        # every sticky address counts as another name's here
        self.occupancy = Occupancy(scope, owners, [rec.value for rec in sticky.values()])
        self.read_at = self.used_at = time.monotonic()
        self.revision = self.latest = revision  # read at; latest store revision seen since
        self.picks = 0
        self.collisions = 0

    def age(self) -> float:
        return time.monotonic() - self.read_at

    def records(self) -> int:
        """About how many records a re-read would return: an address and a name record
        for each address known to be in use, and for each store revision since the read
        (as if every write since had been an allocation)."""
        return 2 * (self.occupancy.in_use() + self.latest - self.revision)

    def stale(self) -> bool:
        now = time.monotonic()
        return now - self.read_at > VIEW_MAX_AGE or now - self.used_at > VIEW_IDLE

    def collided_enough(self) -> bool:
        return self.collisions >= max(COLLISIONS_BEFORE_REREAD,
                                      self.records() // RECORDS_PER_COLLISION)


def _field(kv: KeyValue | None, name: str) -> str:
    return _text_field(kv.value, name) if kv is not None else ""


def _text_field(text: str, name: str) -> str:
    """`name` of a JSON object record, "" if absent or not a string. Records as netd
    writes them ({"NAME": "VALUE"}, nothing escaped) are sliced, not parsed: a full
    re-read of a big pool handles thousands of them."""
    head = f'{{"{name}": "'
    if text.startswith(head) and text.endswith('"}') and "\\" not in text:
        value = text[len(head):-2]
        if '"' not in value:
            return value
    try:
        parsed = json.loads(text).get(name, "")
    except (ValueError, AttributeError):
        return ""
    return parsed if isinstance(parsed, str) else ""


def _mod(kv: KeyValue | None) -> int:
    return kv.mod_revision if kv is not None else 0


class AddressPool:
    def __init__(
        self,
        store: Store,
        keys: Keys,
        scope: AddressRange,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.scope = scope
        self.rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._view: _View | None = None
        first, last = scope.bounds()
        self._span = last - first + 1
        self._home = self.rng.randrange(self._span)  # this daemon's window starts here

    @property
    def network(self) -> str:
        return self.scope.network

    # -- reserve -------------------------------------------------------------------

    def plan_reserve(
        self, endpoint: str, ip: str | None = None, avoid: Collection[str] = ()
    ) -> Plan:
        """What reserving `ip` (or an automatic pick) for `endpoint` would write.

        A fixed address is read from the store; an automatic one is planned from the
        view, so a stale view only makes the commit fail (then: `collided`, plan again).
        """
        check_name(endpoint, "endpoint name")
        if ip is not None:
            return self._plan_fixed(endpoint, self.scope.check(ip))
        return self._plan_auto(endpoint, avoid)

    def _plan_fixed(self, endpoint: str, ip: str) -> Plan:
        net = self.network
        addr = self.store.get(self.keys.ipam_address(net, ip))
        owner = _field(addr, "owner") if addr is not None else None
        if owner is not None and owner != endpoint:
            raise Conflict(
                f"IP {ip} is already in use on network {net} by endpoint {owner or '?'}"
            )
        name = self.store.get(self.keys.ipam_name(net, endpoint))
        sticky_ip = _field(name, "ip")
        if owner is None and sticky_ip and sticky_ip != ip:
            held = self.store.get(self.keys.ipam_address(net, sticky_ip))
            if held is not None and _field(held, "owner") == endpoint:
                raise Conflict(
                    f"endpoint {endpoint} already holds IP {sticky_ip} on network {net}; "
                    "detach it first"
                )
        return self._plan(endpoint, ip, _mod(addr), _Record(sticky_ip, _mod(name)), False)

    def _plan_auto(self, endpoint: str, avoid: Collection[str]) -> Plan:
        with self._lock:
            view, just_read = self._fresh_view()
            sticky = view.sticky.get(endpoint, _Record("", 0))
            if sticky.value and sticky.value not in avoid and self.scope.usable(sticky.value):
                addr = view.owners.get(sticky.value)
                if addr is None or addr.value == endpoint:
                    # already held (idempotent), or free again: the name gets it back
                    view.occupancy.add(sticky.value)
                    mod = addr.mod_revision if addr is not None else 0
                    return self._plan(endpoint, sticky.value, mod, sticky, True)
            ip = self._pick(view, just_read, avoid)
        return self._plan(endpoint, ip, 0, sticky, True)

    def _fresh_view(self) -> tuple[_View, bool]:
        """The view, and whether it was read just now."""
        if self._view is None or self._view.stale():
            self._view = self._read_view()
            return self._view, True
        return self._view, False

    def _window(self) -> tuple[int, int] | None:
        return (self._home, WINDOW) if self._span >= WINDOW * MIN_WINDOWS else None

    def _pick(self, view: _View, just_read: bool, avoid: Collection[str]) -> str:
        for ip in avoid:
            view.occupancy.add(ip)
        try:
            ip = view.occupancy.pick(self.rng, self._window())
        except Exhausted:
            if just_read:
                raise
            self._view = view = self._read_view()
            for ip in avoid:
                view.occupancy.add(ip)
            ip = view.occupancy.pick(self.rng, self._window())
        offset = view.occupancy.offset(ip)
        if (offset - self._home) % self._span >= WINDOW:
            self._home = offset  # the window is full: move it to where there was room
        view.occupancy.add(ip)
        view.picks += 1
        view.used_at = time.monotonic()
        return ip

    def _plan(
        self, endpoint: str, ip: str, addr_mod: int, sticky: _Record, automatic: bool
    ) -> Plan:
        """Conditions/operations that leave `ip` owned by `endpoint` and sticky to it.

        `addr_mod` is the address record's mod_revision as read (0: absent, so it gets
        written), `sticky` the endpoint's name record as read.
        """
        net = self.network
        addr_key, name_key = self.keys.ipam_address(net, ip), self.keys.ipam_name(net, endpoint)
        conditions = [Condition(addr_key, addr_mod)]
        operations: list[Operation] = []
        if addr_mod == 0:
            operations.append(Put(addr_key, json.dumps({"owner": endpoint})))
        if sticky.value != ip or sticky.mod_revision == 0:
            conditions.append(Condition(name_key, sticky.mod_revision))
            operations.append(Put(name_key, json.dumps({"ip": ip})))
        previous = sticky.value if sticky.mod_revision else None
        return Plan(ip, tuple(conditions), tuple(operations), previous, automatic)

    def plan_undo(self, endpoint: str, plan: Plan, revision: int) -> Plan:
        """Undo a reserve `plan` committed at `revision`: remove the address record it
        created and put the name record back as it was, each only if still unchanged."""
        net = self.network
        addr_key = self.keys.ipam_address(net, plan.ip)
        name_key = self.keys.ipam_name(net, endpoint)
        conditions: list[Condition] = []
        operations: list[Operation] = []
        for op in plan.operations:
            if not isinstance(op, Put) or op.key not in (addr_key, name_key):
                continue
            conditions.append(Condition(op.key, revision))
            if op.key == name_key and plan.previous_sticky is not None:
                operations.append(Put(name_key, json.dumps({"ip": plan.previous_sticky})))
            else:
                operations.append(Delete(op.key))
        return Plan("", tuple(conditions), tuple(operations))

    # -- what happened to a plan ---------------------------------------------------

    def committed(self, endpoint: str, plan: Plan, revision: int) -> None:
        """A reserve plan was committed at `revision`: the view knows it without a read."""
        with self._lock:
            view = self._view
            if view is None:
                return
            view.latest = max(view.latest, revision)
            for op in plan.operations:
                if isinstance(op, Put) and op.key == self.keys.ipam_address(self.network, plan.ip):
                    view.owners[plan.ip] = _Record(endpoint, revision)
                elif isinstance(op, Put):
                    view.sticky[endpoint] = _Record(plan.ip, revision)
            view.occupancy.add(plan.ip)

    def collided(self, ip: str) -> None:
        """A commit planned for `ip` failed on an IPAM record: someone else changed the
        pool. Count `ip` as taken, move this daemon's window elsewhere (another daemon
        allocates around `ip`), and re-read the view once collisions cost as much as a
        re-read would."""
        with self._lock:
            self._home = self.rng.randrange(self._span)  # another daemon works here: move
            if self._view is None:
                return
            self._view.occupancy.add(ip)
            view = self._view
            view.collisions += 1
            if view.collided_enough():
                self._view = None

    def released(self, ip: str) -> None:
        """A release of `ip` was committed: the view counts it free again."""
        with self._lock:
            if self._view is not None:
                view = self._view
                view.owners.pop(ip, None)
                view.occupancy.discard(ip, any(r.value == ip for r in view.sticky.values()))

    def invalidate(self) -> None:
        """Forget the cached view of the pool; the next automatic pick re-reads it."""
        with self._lock:
            self._view = None

    # -- release -------------------------------------------------------------------

    def plan_release(self, endpoint: str, ip: str) -> Plan:
        """Free `ip` if `endpoint` owns it; keep the sticky reservation."""
        addr_key = self.keys.ipam_address(self.network, ip)
        addr = self.store.get(addr_key)
        if addr is None or _field(addr, "owner") != endpoint:
            return Plan("")
        return Plan("", (Condition(addr_key, addr.mod_revision),), (Delete(addr_key),))

    def plan_forget(self, endpoint: str) -> Plan:
        """Free every address `endpoint` holds and drop its sticky reservation."""
        net = self.network
        conditions: list[Condition] = []
        operations: list[Operation] = []
        owners, _, _ = self._read()
        for ip, rec in owners.items():
            if rec.value == endpoint:
                key = self.keys.ipam_address(net, ip)
                conditions.append(Condition(key, rec.mod_revision))
                operations.append(Delete(key))
        name_key = self.keys.ipam_name(net, endpoint)
        name = self.store.get(name_key)
        if name is not None:
            conditions.append(Condition(name_key, name.mod_revision))
            operations.append(Delete(name_key))
        return Plan("", tuple(conditions), tuple(operations))

    def plan_release_all(self) -> Plan:
        """Drop every allocation, reservation and MAC claim of the network (`network rm`)."""
        return Plan("", (), (DeletePrefix(self.keys.ipam(self.network)),))

    # -- inspection ----------------------------------------------------------------

    def in_use(self) -> dict[str, str]:
        """Allocated address -> owning endpoint, read now."""
        return {ip: rec.value for ip, rec in self._read()[0].items()}

    def reservations(self) -> dict[str, str]:
        """Endpoint name -> its sticky address (held or not), read now."""
        return {ep: rec.value for ep, rec in self._read()[1].items()}

    # -- helpers -------------------------------------------------------------------

    def _read_view(self) -> _View:
        owners, sticky, revision = self._read()
        return _View(self.scope, owners, sticky, revision)

    def _read(self) -> tuple[dict[str, _Record], dict[str, _Record], int]:
        net = self.network
        addr_prefix, name_prefix = self.keys.ipam_addresses(net), self.keys.ipam_names(net)
        # two reads, not one of the whole ipam prefix: the MAC claims are not needed
        addrs, _ = self.store.list(addr_prefix)
        names, revision = self.store.list(name_prefix)
        skip_addr, skip_name = len(addr_prefix), len(name_prefix)
        owners = {
            kv.key[skip_addr:]: _Record(_text_field(kv.value, "owner"), kv.mod_revision)
            for kv in addrs
        }
        sticky = {
            kv.key[skip_name:]: _Record(_text_field(kv.value, "ip"), kv.mod_revision)
            for kv in names
        }
        return owners, sticky, revision
