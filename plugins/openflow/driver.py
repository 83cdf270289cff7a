"""The openflow driver: an Open vSwitch edge programmed over OpenFlow 1.3 by netd itself.

Each host runs one integration bridge (`ndoi1`, fail_mode=secure, OpenFlow13 only,
datapath_type=netdev where the openvswitch kernel module is missing, else the kernel
datapath) whose controller is the os-ken app this process runs (plugins.openflow.app).
Bridge and ports are configured through OVSDB (plugins.openflow.ovsdb); every flow is
computed from the desired state by pure functions (plugins.openflow.pipeline) and pushed
by plugins.openflow.switch. Hosts are joined by one GRE (default) or VXLAN port per
remote host with `key=flow`; the network's VNI is the tunnel key.

Flow ownership and restarts: every flow carries a cookie naming its owner and content
(plugins.openflow.cookies). An apply computes the complete flow table, installs what the
switch lacks and deletes netd flows nobody wants any more: ones this process installed
at once, ones from before a restart only after the first full sync. Flows with other
cookies are never touched. The switch keeps its flows while netd is away (fail_mode
secure), so a restarted netd finds every cookie in place and changes nothing. A switch
that (re)connects, or a canary flow that vanished (ovs-vswitchd restarted, someone
deleted flows), asks for a verify apply, which re-reads the table and rebuilds it.

Policy: the computed policy of this driver's ports arrives in `HostState.policy` and is
rendered in the same apply (plugins.openflow.security: anti-spoofing, stateful security
groups with OVS conntrack); a port the policy does not list gets no hook flows (closed).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

from netd.errors import DatapathError
from netd.model import Host
from netd.plugin import (
    ApplyReport,
    BackendSpec,
    DriverContext,
    DriverSpec,
    HostState,
    NetworkState,
    OptionSpec,
    endpoint_id,
    network_id,
    other_peers,
    remote_endpoints,
)
from netd.plumbing import ContainerPort, PlugFailed, plug, unplug
from netd.policy.model import PortPolicy
from plugins.openflow.names import (
    INTEGRATION_BRIDGE,
    PATCH_INT,
    PATCH_UNDERLAY,
    host_veth_name,
    is_tunnel_port,
    is_veth_port,
    tunnel_port_name,
)
from plugins.openflow.ovsdb import Ovsdb, PortInfo, default_remote, kernel_datapath_available
from plugins.openflow.pipeline import (
    Flow,
    LocalPort,
    NetworkView,
    RemoteMac,
    canary_flow,
    endpoint_flows,
    mac2mac_endpoint_flows,
    mac2mac_port_flows,
    network_flows,
    pipeline_flows,
    remote_flows,
    tunnel_flows,
)
from plugins.openflow.security import open_policy, port_flows

log = logging.getLogger(__name__)

IPV4 = 20
ETHERNET = 14  # the inner frame's Ethernet header
GRE_WITH_KEY = 8  # GRE header 4 + key 4
UDP_VXLAN = 8 + 8
PORT_ENV = "NETD_OF_PORT"  # the controller's TCP port on 127.0.0.1 (default 6653)
# the host's OVS bridge carrying the underlay address: MAC2MAC frames leave through it
UNDERLAY_BRIDGE_ENV = "NETD_OF_UNDERLAY_BRIDGE"
CONNECT_WAIT = 5.0  # seconds an apply waits for the bridge to connect
CANARY_INTERVAL = 1.0
OFFLOADS_OFF = ("tx", "off", "tso", "off", "gso", "off")


class OpenFlowDriver:
    name = "openflow"
    spec: ClassVar[DriverSpec] = DriverSpec(
        name="openflow",
        backends=(
            BackendSpec("gre", overhead=IPV4 + GRE_WITH_KEY + ETHERNET),  # 42
            BackendSpec("vxlan", overhead=IPV4 + UDP_VXLAN + ETHERNET),  # 50
        ),
        default_backend="gre",
        options=(
            OptionSpec("mac2mac", bool, "between hosts on one underlay segment, send frames "
                       "untunnelled with the destination MAC rewritten", False),
        ),
    )

    def __init__(self, ctx: DriverContext) -> None:
        self._ctx = ctx
        self.bridge = INTEGRATION_BRIDGE
        self.datapath_type = "system" if kernel_datapath_available() else "netdev"
        self._remote = default_remote()
        self._port = int(os.environ.get(PORT_ENV) or 6653)
        self._ovs: Ovsdb | None = None
        self._switch: Any = None  # plugins.openflow.switch.Switch once started
        self._error = ""
        self._lock = threading.Lock()
        # cookies this process knows are on the switch (None: unknown, dump first)
        self._on_switch: set[int] | None = None
        self._mine: set[int] = set()  # cookies this process installed
        self._synced = False  # a full sync (with sweep) completed
        self._applied_ports: set[str] = set()  # veth/tunnel ports this process made
        self._offloads_done: set[str] = set()
        self._stop = threading.Event()
        self._canary: threading.Thread | None = None
        self._flow_count = 0
        self._underlay_bridge = os.environ.get(UNDERLAY_BRIDGE_ENV) or None
        self._segment: str | None = None  # the underlay subnet, when MAC2MAC can work
        self._patch_ofport: int | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def setup(self) -> dict[str, Any]:
        host = self._ctx.host()
        try:
            self._ready()
            self._setup_mac2mac(host)
        except DatapathError as exc:
            self._error = str(exc)
            log.warning("openflow: %s (networks of this driver fail until it is fixed)", exc)
        return {"vtep": host.underlay_ip, "datapath_type": self.datapath_type,
                "segment": self._segment}

    def _setup_mac2mac(self, host: Host) -> None:
        """A patch pair between the integration bridge and the underlay bridge, and the
        underlay segment this host publishes (hosts with the same one swap frames
        untunnelled on MAC2MAC networks)."""
        if self._underlay_bridge is None or self._ovs is None:
            return
        addresses = self._ctx.netlink.list_addresses(self._underlay_bridge)
        prefix = next((plen for ip, plen in addresses if ip == host.underlay_ip), None)
        if prefix is None:
            log.warning("openflow: %s does not carry %s: no MAC2MAC", self._underlay_bridge,
                        host.underlay_ip)
            return
        self._ovs.ensure_port(self.bridge, PATCH_INT, type="patch",
                              options={"peer": PATCH_UNDERLAY}, owner="mac2mac")
        self._ovs.ensure_port(self._underlay_bridge, PATCH_UNDERLAY, type="patch",
                              options={"peer": PATCH_INT}, owner="mac2mac")
        self._segment = str(ipaddress.ip_network(f"{host.underlay_ip}/{prefix}", strict=False))

    def _ready(self) -> None:
        """OVSDB connected, controller running, bridge configured."""
        with self._lock:
            if self._ovs is not None and self._switch is not None:
                return
            if self._remote.startswith("unix:") and not os.path.exists(self._remote[5:]):
                raise DatapathError(f"no OVSDB socket at {self._remote[5:]} (is Open vSwitch "
                                    f"running? set NETD_OVSDB to another remote)")
            from plugins.openflow.app import Controller
            from plugins.openflow.switch import Switch

            ovs = Ovsdb(self._remote)
            controller = Controller(port=self._port)
            app = controller.start()
            app.on_connect = self._switch_connected
            ovs.ensure_bridge(self.bridge, self.datapath_type, controller.target)
            self._ovs = ovs
            self._switch = Switch(app)
            self._error = ""
            self._canary = threading.Thread(target=self._watch_canary, name="of-canary",
                                            daemon=True)
            self._canary.start()
            log.info("openflow: bridge %s, datapath %s, controller %s", self.bridge,
                     self.datapath_type, controller.target)

    def _switch_connected(self) -> None:
        self._on_switch = None  # read the table again before trusting it
        self._ctx.request_resync()

    def _watch_canary(self) -> None:
        cookie = canary_flow().cookie
        while not self._stop.wait(CANARY_INTERVAL):
            switch = self._switch
            if switch is None or not self._synced or switch.app.datapath is None:
                continue
            try:
                present = switch.dump(cookie, (1 << 64) - 1)
            except DatapathError:
                continue
            if not present:
                log.warning("openflow: the canary flow is gone: rebuilding every flow")
                self._on_switch = None
                self._ctx.request_resync()

    def close(self) -> None:
        self._stop.set()
        if self._ovs is not None:
            self._ovs.close()

    def teardown(self) -> None:
        """Every endpoint port and tunnel, then the bridge itself and the patch port on
        the underlay bridge: nothing of netd's stays in OVS."""
        report = self.apply(HostState(self._ctx.host(), {}, {}), sweep=True, verify=True)
        if self._ovs is not None:
            try:
                if self._underlay_bridge is not None:
                    self._ovs.delete_port(self._underlay_bridge, PATCH_UNDERLAY)
                self._ovs.delete_bridge(self.bridge)
            except DatapathError as exc:
                report.fail("driver:openflow", str(exc))
        if report.errors:
            raise DatapathError("; ".join(f"{k}: {v}" for k, v in report.errors.items()))

    def observe(self) -> dict[str, Any]:
        kind = "userspace" if self.datapath_type == "netdev" else "kernel"
        out: dict[str, Any] = {
            "bridge": self.bridge, "datapath_type": self.datapath_type,
            "ovsdb": self._remote, "controller": f"tcp:127.0.0.1:{self._port}",
            "connected": False, "ports": 0,
        }
        if self._error:
            out["error"] = self._error
        if self._ovs is not None and self._switch is not None:
            out["connected"] = self._switch.app.datapath is not None
            out["flows"] = self._flow_count
            try:
                ports = self._ovs.ports(self.bridge)
            except DatapathError as exc:
                out["error"] = str(exc)
                ports = {}
            out["ports"] = len([p for p in ports if p != self.bridge])
            out["port_list"] = {
                p.name: {"ofport": p.ofport, "type": p.type or "system",
                         **({"remote_ip": p.options["remote_ip"]}
                            if "remote_ip" in p.options else {})}
                for p in ports.values() if p.name != self.bridge}
        out["summary"] = (
            f"bridge {self.bridge} datapath {self.datapath_type} ({kind}), controller "
            f"{'connected' if out['connected'] else 'not connected'}, "
            f"{out.get('flows', 0)} flows" + (f", error: {out['error']}" if "error" in out else ""))
        return out

    # -- apply ------------------------------------------------------------------------------
    def apply(self, desired: HostState, *, sweep: bool, verify: bool) -> ApplyReport:
        report = ApplyReport()
        if not desired.networks and self._ovs is None:
            return report
        try:
            self._ready()
            assert self._switch is not None
            self._switch.datapath(wait=CONNECT_WAIT)
        except DatapathError as exc:
            self._error = str(exc)
            for ns in desired.networks.values():
                report.fail(network_id(ns.network), f"openflow: {exc}")
            if not desired.networks:
                report.fail("driver:openflow", str(exc))
            return report
        assert self._ovs is not None
        host = desired.host
        try:
            ports = self._ovs.ports(self.bridge)
        except DatapathError as exc:
            report.fail("driver:openflow", str(exc))
            return report
        wanted = self._apply_ports(desired, host, ports, report, verify)
        self._remove_ports(ports, wanted, sweep, report)
        if wanted.keys() - ports.keys() or any(ports[n].ofport <= 0 for n in wanted
                                                if n in ports):
            try:
                ports = self._ovs.ports(self.bridge)
            except DatapathError as exc:
                report.fail("driver:openflow", str(exc))
                return report
        flows = self._desired_flows(desired, host, ports, report)
        self._push(flows, sweep=sweep, verify=verify, report=report)
        return report

    def _apply_ports(self, desired: HostState, host: Host, ports: dict[str, PortInfo],
                     report: ApplyReport, verify: bool) -> dict[str, str]:
        """Veth ports of local endpoints and one tunnel port per peer host and backend;
        returns the wanted port names with the item each belongs to."""
        assert self._ovs is not None
        wanted: dict[str, str] = {}
        nl = self._ctx.netlink
        for ns in desired.networks.values():
            net = ns.network
            for ep in ns.local:
                item = endpoint_id(ep)
                name = host_veth_name(net.name, ep.name)
                wanted[name] = item
                owner = f"{net.name}/{ep.name}"
                port = ContainerPort(host_name=name, netns=ep.netns, ifname=ep.ifname,
                                     mac=ep.mac, mtu=net.mtu, ip=ep.ip,
                                     prefixlen=net.prefixlen, gateway=net.gateway)
                try:
                    if verify or name not in self._applied_ports or name not in ports:
                        changed = plug(nl, port)
                        report.changed += changed
                        if changed or name not in self._offloads_done:
                            self._offloads_off(name, ep.netns, ep.ifname)
                    info = ports.get(name)
                    if info is None or info.external_ids.get("netd-owner") != owner:
                        self._ovs.ensure_port(self.bridge, name, owner=owner)
                        report.changed += 1
                    self._applied_ports.add(name)
                except (PlugFailed, DatapathError) as exc:
                    report.fail(item, str(exc))
                    self._applied_ports.discard(name)
            for peer in other_peers(ns, host):
                name = tunnel_port_name(net.backend, peer.underlay_ip)
                if name in wanted:
                    continue
                wanted[name] = network_id(net)
                options = {"remote_ip": peer.underlay_ip, "key": "flow"}
                info = ports.get(name)
                if (info is not None and info.type == net.backend
                        and info.options == options
                        and info.external_ids.get("netd-owner") == peer.underlay_ip):
                    self._applied_ports.add(name)
                    continue
                try:
                    self._ovs.ensure_port(self.bridge, name, type=net.backend, options=options,
                                          owner=peer.underlay_ip)
                    self._applied_ports.add(name)
                    report.changed += 1
                except DatapathError as exc:
                    report.fail(network_id(net), str(exc))
        return wanted

    def _offloads_off(self, host_end: str, netns: str, ifname: str) -> None:
        """The userspace datapath checksums nothing: TCP needs tx checksum/TSO/GSO off on
        both ends of a veth attached to OVS (docs/openflow.md)."""
        for cmd in (["ethtool", "-K", host_end, *OFFLOADS_OFF],
                    ["nsenter", f"--net={netns}", "ethtool", "-K", ifname, *OFFLOADS_OFF]):
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            if result.returncode != 0:
                raise DatapathError(f"turning offloads off ({' '.join(cmd[-8:-6])}) failed: "
                                    f"{result.stderr.strip()}")
        self._offloads_done.add(host_end)

    def _remove_ports(self, ports: dict[str, PortInfo], wanted: dict[str, str], sweep: bool,
                      report: ApplyReport) -> None:
        assert self._ovs is not None
        for name in sorted(ports):
            if name in wanted or not (is_veth_port(name) or is_tunnel_port(name)):
                continue
            if name not in self._applied_ports and not sweep:
                continue  # from before a restart: only a sweep takes it
            try:
                self._ovs.delete_port(self.bridge, name)
                if is_veth_port(name):
                    unplug(self._ctx.netlink, name)
                report.changed += 1
                self._applied_ports.discard(name)
                self._offloads_done.discard(name)
            except DatapathError as exc:
                report.fail(f"link:{name}", str(exc))

    def _desired_flows(self, desired: HostState, host: Host, ports: dict[str, PortInfo],
                       report: ApplyReport) -> dict[int, tuple[Flow, str]]:
        """cookie -> (flow, item it belongs to)."""
        flows: dict[int, tuple[Flow, str]] = {}

        def add(items: Iterable[Flow], item: str) -> None:
            for flow in items:
                flows.setdefault(flow.cookie, (flow, item))

        add(pipeline_flows(), "driver:openflow")
        patch = ports.get(PATCH_INT)
        self._patch_ofport = patch.ofport if patch is not None and patch.ofport > 0 else None
        if self._patch_ofport is not None and self._segment is not None:
            add(mac2mac_port_flows(self._patch_ofport), "driver:openflow")
        tunnels_done: set[str] = set()
        policy = desired.policy
        policies = ({(p.network, p.endpoint): p for p in policy.ports}
                    if policy is not None else None)
        members = policy.members if policy is not None else {}
        for ns in sorted(desired.networks.values(), key=lambda n: n.network.vni):
            view = self._view(ns, host, desired, ports, report, policies)
            if view is None:
                continue
            net_item = network_id(ns.network)
            for peer in other_peers(ns, host):
                name = tunnel_port_name(ns.network.backend, peer.underlay_ip)
                info = ports.get(name)
                if name not in tunnels_done and info is not None and info.ofport > 0:
                    tunnels_done.add(name)
                    add(tunnel_flows(name, info.ofport), net_item)
            add(network_flows(view), net_item)
            for port in view.local:
                add(endpoint_flows(view.vni, port), f"endpoint:{port.key}")
                add(port_flows(view.vni, port, _port_policy(policies, ns.network.name, port),
                               members), f"endpoint:{port.key}")
                if view.mac2mac_port is not None:
                    add(mac2mac_endpoint_flows(view.vni, port, view.mac2mac_port),
                        f"endpoint:{port.key}")
            for remote in view.remote:
                add(remote_flows(view.vni, remote, view.mac2mac_port), net_item)
        return flows

    def _view(self, ns: NetworkState, host: Host, desired: HostState,
              ports: dict[str, PortInfo], report: ApplyReport,
              policies: dict[tuple[str, str], PortPolicy] | None = None) -> NetworkView | None:
        net = ns.network
        local: list[LocalPort] = []
        closed: list[int] = []
        for ep in ns.local:
            info = ports.get(host_veth_name(net.name, ep.name))
            if info is None or info.ofport <= 0:
                if endpoint_id(ep) not in report.errors:
                    report.fail(endpoint_id(ep), "its OVS port has no OpenFlow port number"
                                + (f": {info.error}" if info is not None and info.error else ""))
                continue
            local.append(LocalPort(f"{net.name}/{ep.name}", ep.mac, ep.ip, info.ofport))
            mine = _port_policy(policies, net.name, local[-1])
            if mine is None or mine.restricted_ingress:
                closed.append(info.ofport)
        tunnels: dict[str, int] = {}
        for peer in other_peers(ns, host):
            info = ports.get(tunnel_port_name(net.backend, peer.underlay_ip))
            if info is None or info.ofport <= 0:
                report.fail(network_id(net), f"tunnel to {peer.name} ({peer.underlay_ip}) "
                            "is not up" + (f": {info.error}" if info and info.error else ""))
                continue
            tunnels[peer.underlay_ip] = info.ofport
        mac2mac = (net.options.get("mac2mac") == "true" and self._segment is not None
                   and self._patch_ofport is not None and net.prefixlen >= 16)
        remote: list[RemoteMac] = []
        for ep, peer in remote_endpoints(ns, desired.hosts, report):
            ofport = tunnels.get(peer.underlay_ip)
            if ofport is None:
                continue
            same_segment = mac2mac and (
                (peer.driver_data.get("openflow") or {}).get("segment") == self._segment)
            remote.append(RemoteMac(f"{net.name}/{ep.name}", ep.mac, ep.ip, ofport,
                                    mac2mac=same_segment))
        return NetworkView(net.vni, tuple(local), tuple(remote), tuple(tunnels.values()),
                           mac2mac_port=self._patch_ofport if mac2mac else None,
                           closed=tuple(sorted(closed)))

    def _push(self, flows: dict[int, tuple[Flow, str]], *, sweep: bool, verify: bool,
              report: ApplyReport) -> None:
        switch = self._switch
        assert switch is not None
        try:
            if verify or self._on_switch is None:
                on_switch = {f.cookie for f in switch.dump()}
            else:
                on_switch = set(self._on_switch)
            install = [(flow, item) for cookie, (flow, item) in sorted(flows.items())
                       if cookie not in on_switch]
            stale = on_switch - flows.keys()
            if not sweep:
                stale &= self._mine  # leftovers of an earlier process wait for the sweep
            errors = switch.push(install, delete_cookies=sorted(stale))
        except DatapathError as exc:
            self._on_switch = None
            for item in {item for _, item in flows.values()}:
                report.fail(item, f"openflow: {exc}")
            return
        failed: set[int] = set()
        for tag, message in errors.items():
            if isinstance(tag, str) and tag.startswith("delete"):
                report.fail("driver:openflow", f"{tag}: {message}")
            else:
                report.fail(str(tag), f"switch refused a flow: {message}")
        for flow, item in install:
            if item in report.errors:
                failed.add(flow.cookie)
        report.changed += len(install) + len(stale)
        now = (on_switch - stale) | {f.cookie for f, _ in install}
        self._on_switch = now - failed
        self._mine |= {f.cookie for f, _ in install}
        self._mine &= self._on_switch
        self._flow_count = len(self._on_switch)
        if sweep and not failed:
            self._synced = True


def _port_policy(policies: dict[tuple[str, str], PortPolicy] | None, network: str,
                 port: LocalPort) -> PortPolicy | None:
    """A local port's computed policy; no policy at all (a caller without one): only
    anti-spoofing; a policy that lacks the port: None (closed until it has one)."""
    if policies is None:
        return open_policy(network, port)
    return policies.get((network, port.key.split("/", 1)[1]))
