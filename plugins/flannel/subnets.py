"""This host's subnet lease per flannel network: acquire, reuse, keep.

A host takes one subnet per network, as flanneld does, under an etcd lease kept alive
by netd's lease keeper (renewed at a third of its TTL; written again under a new lease
when it lapsed, e.g. after a store outage longer than the TTL, so a host that has
containers is never renumbered). Which subnet:
1. the lease a record already gives this host's PublicIP (a restart: the lease id is
   adopted from the state dir, so the record never even flickers);
2. else the subnet of this host's subnet env file, if no other host holds it;
3. else a random free subnet between SubnetMin and SubnetMax, taken with
   create-if-absent (another host racing for it makes us try the next).

The subnet env file (`<state dir>/<network>.env`, flannel's subnet.env format) is
written with each lease, for tools that read FLANNEL_NETWORK/SUBNET/MTU/IPMASQ.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from netd.errors import Exhausted
from netd.leases import KeptLease
from netd.model import Network
from netd.plugin import DriverContext
from plugins.flannel.config import FlannelConfig, SubnetLease, parse_lease, vtep_mac

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    config: FlannelConfig
    lease: SubnetLease
    kept: KeptLease


class SubnetLeases:
    def __init__(self, ctx: DriverContext, rng: random.Random | None = None) -> None:
        self.ctx = ctx
        self.rng = rng or random.Random()
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}

    def held(self, network: str) -> Held | None:
        with self._lock:
            return self._held.get(network)

    def wanted(self, network: Network, config: FlannelConfig) -> SubnetLease:
        """What this host's lease record should say (subnet aside)."""
        host = self.ctx.host()
        mac = vtep_mac(host.name, network.name) if config.backend == "vxlan" else ""
        return SubnetLease("", host.underlay_ip, config.backend, mac,
                           config.vni if config.backend == "vxlan" else 0)

    def acquire(self, network: Network, config: FlannelConfig) -> Held:
        """This host's lease on `network`, acquired (or adopted) if it holds none."""
        with self._lock:
            held = self._held.get(network.name)
            if held is not None and held.config == config:
                return held
            held = self._acquire(network, config)
            self._held[network.name] = held
        self.write_env(network, held)
        return held

    def _acquire(self, network: Network, config: FlannelConfig) -> Held:
        store = self.ctx.store
        want = self.wanted(network, config)
        kept = self.ctx.leases.lease(f"flannel-{network.name}", config.lease_ttl,
                                     on_renewed=self.ctx.request_resync)
        kept.adopt(kept.saved_id())
        items, _ = store.list(config.subnets_prefix)
        leases = {}
        for kv in items:
            lease = parse_lease(kv.key[len(config.subnets_prefix):], kv.value)
            if lease is not None:
                leases[lease.subnet] = lease
        mine = [s for s, le in leases.items()
                if le.public_ip == want.public_ip and config.leasable(s)]
        for subnet in sorted(mine):
            lease = SubnetLease(subnet, want.public_ip, want.backend_type, want.vtep_mac,
                                want.vni)
            kept.put(config.subnet_key(subnet), lease.to_json())
            log.info("flannel %s: reusing subnet %s", network.name, subnet)
            return Held(config, lease, kept)
        free = [s for s in config.candidates() if s not in leases]
        self.rng.shuffle(free)
        from_file = self.env_subnet(network)
        if from_file in free:  # the subnet this host had before, if nobody took it
            free.remove(from_file)
            free.insert(0, from_file)
        for subnet in free:
            lease = SubnetLease(subnet, want.public_ip, want.backend_type, want.vtep_mac,
                                want.vni)
            if store.create(config.subnet_key(subnet), lease.to_json(), kept.ensure()):
                kept.put(config.subnet_key(subnet), lease.to_json())
                log.info("flannel %s: leased subnet %s", network.name, subnet)
                return Held(config, lease, kept)
        raise Exhausted(
            f"flannel network {network.name}: no free /{config.subnet_len} between "
            f"{config.subnet_min} and {config.subnet_max} ({len(leases)} leased)"
        )

    def release(self, network: str) -> None:
        with self._lock:
            held = self._held.pop(network, None)
        if held is not None:
            held.kept.release()
            self.env_path(network).unlink(missing_ok=True)

    # --- subnet env file -------------------------------------------------------------
    def env_path(self, network: str) -> Path:
        return self.ctx.state_dir / f"{network}.env"

    def env_subnet(self, network: Network) -> str | None:
        try:
            text = self.env_path(network.name).read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key == "FLANNEL_SUBNET" and "/" in value:
                ip, _, plen = value.partition("/")
                parts = ip.split(".")
                if len(parts) == 4 and parts[3].isdigit():
                    size = 1 << (32 - int(plen))
                    last = int(parts[3]) - int(parts[3]) % size
                    return f"{'.'.join(parts[:3])}.{last}/{plen}"
        return None

    def write_env(self, network: Network, held: Held) -> None:
        text = (f"FLANNEL_NETWORK={held.config.network}\n"
                f"FLANNEL_SUBNET={held.lease.gateway}/{held.lease.prefixlen}\n"
                f"FLANNEL_MTU={network.mtu}\nFLANNEL_IPMASQ=false\n")
        path = self.env_path(network.name)
        try:
            if path.read_text() == text:
                return
        except OSError:
            pass
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
