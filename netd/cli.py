"""`netctl`: a thin client of the netd socket API (DESIGN §5).

It parses arguments, sends one request, and prints a table (or JSON with --json).
Errors print one line to stderr and exit non-zero; all logic lives in the daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import http.client
import io
import json
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

from netd.config import DEFAULT_SOCKET

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
# connect() on a unix socket whose listen backlog is full fails at once with EAGAIN
# (it does not wait as TCP does): try again after these pauses before giving up
CONNECT_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8)


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        for delay in (*CONNECT_RETRY_DELAYS, None):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self._path)
            except BlockingIOError as exc:  # the daemon's accept queue is full
                sock.close()
                if exc.errno != errno.EAGAIN or delay is None:
                    raise
                time.sleep(delay)
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return


# How long netctl waits for an answer: a read answers at once; a change may wait for
# this host's datapath (the daemon's apply timeout, 15 s) and a store retry.
READ_TIMEOUT = 10.0
CHANGE_TIMEOUT = 30.0


class Client:
    def __init__(self, socket_path: Path, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        changes = method != "GET"
        timeout = self.timeout or (CHANGE_TIMEOUT if changes else READ_TIMEOUT)
        conn = _UnixConnection(str(self.socket_path), timeout)
        sent = False
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            sent = True
            resp = conn.getresponse()
            data = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise CliError(
                f"netd is not running (no socket at {self.socket_path}); start it with `netd`",
                EXIT_UNREACHABLE,
            ) from None
        except PermissionError:
            raise CliError(f"permission denied on {self.socket_path}; run as root") from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise CliError(self._failure(exc, sent, changes, timeout), EXIT_UNREACHABLE) from None
        finally:
            conn.close()
        try:
            value = json.loads(data) if data else None
        except (ValueError, RecursionError):
            raise CliError(
                f"the answer on {self.socket_path} is not netd's (HTTP {resp.status}, not JSON)"
            ) from None
        if resp.status >= 400:
            raise CliError(_error_message(value, resp.status))
        return value

    def _failure(self, exc: BaseException, sent: bool, changes: bool, timeout: float) -> str:
        if isinstance(exc, TimeoutError):
            what = f"netd at {self.socket_path} did not answer within {timeout:g} s"
        elif isinstance(exc, http.client.RemoteDisconnected) or (
            sent and isinstance(exc, ConnectionError)
        ):
            what = f"netd at {self.socket_path} closed the connection without answering"
        elif isinstance(exc, http.client.HTTPException):
            return f"the answer on {self.socket_path} is not netd's ({type(exc).__name__})"
        else:
            return f"talking to netd at {self.socket_path} failed: {exc}"
        if sent and changes:
            return (f"{what}: the outcome of this change is unknown (netd may have stopped "
                    "mid-request); check with `netctl endpoint ls` / `network ls`, or repeat "
                    "the command, which is safe")
        return f"{what}; is it stopped or overloaded? (netctl status)"


def _error_message(value: Any, status: int) -> str:
    """The one line to print for an error answer, whatever shape its body has."""
    error = value.get("error") if isinstance(value, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if isinstance(message, str) and message.strip():
        return " ".join(message.split())
    return f"netd answered HTTP {status} without an error message"


# --- output -----------------------------------------------------------------------
def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _print_networks(value: list[dict[str, Any]]) -> str:
    return table(
        [
            (n["name"], n["tenant"], n["subnet"], n["gateway"], f"{n['driver']}/{n['backend']}",
             n["vni"], n["mtu"], "yes" if n.get("encrypt") else "")
            for n in value
        ],
        ["NAME", "TENANT", "SUBNET", "GATEWAY", "DRIVER", "VNI", "MTU", "ENCRYPT"],
    )


def _print_endpoints(value: list[dict[str, Any]]) -> str:
    published = any(e.get("published") for e in value)
    return table(
        [
            (e["network"], e["name"], e["host"], e["ifname"], e["ip"], e["mac"],
             ",".join(e.get("security_groups") or ()),
             *([",".join(e.get("published") or ())] if published else []))
            for e in value
        ],
        ["NETWORK", "CONTAINER", "HOST", "IFNAME", "IP", "MAC", "SG",
         *(["PUBLISHED"] if published else [])],
    )


def _print_network(value: dict[str, Any]) -> str:
    lines = [f"{k}: {value[k]}" for k in
             ("name", "tenant", "subnet", "gateway", "driver", "backend", "vni", "mtu", "encrypt")]
    if value.get("options"):
        lines.append("options: " + ", ".join(f"{k}={v}" for k, v in value["options"].items()))
    if value.get("exposed_by"):
        lines.append("exposed by: " + ", ".join(
            e["host"] + ("" if e.get("masquerade", True) else " (no masquerade)")
            for e in value["exposed_by"]))
    lines.append("endpoints:")
    eps = value.get("endpoints") or []
    lines.append(_print_endpoints(eps) if eps else "  (none)")
    return "\n".join(lines)


def _print_endpoint(e: dict[str, Any]) -> str:
    return f"{e['name']} on {e['network']}: {e['ifname']} {e['ip']} {e['mac']} (host {e['host']})"


def _print_hosts(value: list[dict[str, Any]]) -> str:
    text = table(
        [(h["name"], h.get("underlay_ip") or "?", "alive" if h.get("alive") else "dead",
          h.get("health", ""), _ms(h.get("rtt_ms")), _percent(h.get("loss")),
          _path_mtus(h.get("paths") or {}), _ago(h.get("last_seen")) if h.get("last_seen")
          else "-", h.get("tunnel", ""), ",".join(h.get("shared_networks") or ()))
         for h in value],
        ["HOST", "UNDERLAY", "STATE", "HEALTH", "RTT", "LOSS", "PATH MTU", "LAST SEEN",
         "TUNNEL", "SHARED NETWORKS"],
    )
    flags = [f"! {h['name']}: {flag}" for h in value for flag in h.get("flags") or ()]
    return "\n".join([text, *flags])


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def _path_mtus(paths: dict[str, Any]) -> str:
    """The smallest measured path MTU, marked `!` when a path carries less than it must."""
    measured = [(p["path_mtu"], p.get("mtu_ok")) for p in paths.values()
                if p.get("path_mtu") is not None]
    if not measured:
        return "-"
    smallest = min(m for m, _ in measured)
    return f"{smallest}{'!' if any(ok is False for _, ok in measured) else ''}"


def _peer_lines(peers: dict[str, Any]) -> list[str]:
    """One line per peer with its probe results; its flags below it."""
    if not peers:
        return ["peers: none probed"]
    lines = ["peers:"]
    for name, p in sorted(peers.items()):
        lease = p.get("lease_expires_by")
        expiry = (f", lease lapses by {max(0.0, lease - time.time()):.0f} s from now if gone"
                  if lease else "")
        lines.append(f"  {name}: {p.get('health')}, rtt {_ms(p.get('rtt_ms'))}, loss "
                     f"{_percent(p.get('loss'))}, path mtu {_path_mtus(p.get('paths') or {})}, "
                     f"last seen {_ago(p.get('last_seen'))}{expiry}")
        lines += [f"    ! {flag}" for flag in p.get("flags") or ()]
    return lines


def _print_drivers(value: list[dict[str, Any]]) -> str:
    def backend(b: dict[str, Any], default: str) -> str:
        star = "*" if b["name"] == default else ""
        crypto = f", encrypted -{b['encryption_overhead']}" if b["encryption"] else ""
        return f"{b['name']}{star} (-{b['overhead']}{crypto})"

    rows = []
    for d in value:
        backends = ", ".join(backend(b, d["default_backend"]) for b in d["backends"])
        options = ", ".join(f"{o['name']}={o['type']}" for o in d["options"]) or "-"
        rows.append((d["name"], backends, options))
    return table(rows, ["DRIVER", "BACKENDS (* default, MTU overhead)", "OPTIONS (-o)"])


def _ago(when: Any) -> str:
    if not isinstance(when, int | float) or when <= 0:
        return "never"
    return f"{max(0.0, time.time() - when):.1f} s ago"


def _print_status(s: dict[str, Any]) -> str:
    store = s["store"]
    lines = [
        f"host: {s['host']['name']} ({s['host']['underlay_ip']}, underlay mtu "
        f"{s['host']['underlay_mtu']})",
        (f"store: reachable (revision {store['revision']})" if store["reachable"]
         else f"store: UNREACHABLE, {store['state']}" if store.get("state")
         else f"store: UNREACHABLE {store['error']}"),
        f"networks: {s['networks']}  local endpoints: {s['endpoints']}",
        f"last sync: {_ago(s.get('last_sync'))}, applied revision {s['applied_revision']}, "
        f"{s['syncs']} syncs",
    ]
    if s.get("drivers") is not None:
        lines.insert(1, f"drivers: {', '.join(s['drivers']) or 'none'}")
    lines += _worker_lines(s.get("workers") or {})
    lines += _print_gateway_status(s.get("gateway") or {})
    if s["errors"]:
        lines.append("errors:")
        lines += [f"  {item}: {msg}" for item, msg in sorted(s["errors"].items())]
    else:
        lines.append("errors: none")
    lines += _datapath_lines(s.get("datapath") or {})
    if "peers" in s:
        lines += _peer_lines(s["peers"] or {})
    return "\n".join(lines)


def _worker_lines(workers: dict[str, Any]) -> list[str]:
    """One line per driver's reconcile worker: what it applied, when, whether it is busy."""
    lines = ["workers:"] if workers else []
    for name, w in sorted(workers.items()):
        state = "idle"
        if w.get("applying_since"):
            state = f"applying for {max(0.0, time.time() - w['applying_since']):.1f} s"
            if w.get("pending"):
                state += ", newer state waiting"
        errors = len(w.get("errors") or {})
        retry = f", retry in {w['retry_in']:.1f} s" if errors and w.get("retry_in") else ""
        lines.append(
            f"  {name}: revision {w.get('revision', 0)}, last sync {_ago(w.get('last_sync'))}, "
            f"{w.get('syncs', 0)} syncs, {state}, {errors} errors{retry}"
        )
    return lines


def _datapath_lines(datapath: dict[str, Any]) -> list[str]:
    """One line per driver: link, network and port counts, sleeve traffic if any."""
    if "error" in datapath and not isinstance(datapath["error"], dict):
        return [f"datapath: {datapath['error']}"]
    lines = ["datapath:" if datapath else "datapath: no driver loaded"]
    for driver, seen in sorted(datapath.items()):
        if not isinstance(seen, dict):
            lines.append(f"  {driver}: {seen}")
            continue
        parts = [f"{len(seen.get('links') or {})} links",
                 f"{len(seen.get('networks') or {})} networks"]
        if "ports" in seen:
            parts.append(f"{seen['ports']} ports")
        if seen.get("summary"):  # a driver's own one-line account (openflow: its datapath)
            parts.append(str(seen["summary"]))
        sleeve = seen.get("sleeve") or {}
        drops = sleeve.get("host") or {}
        if drops:
            parts.append("sleeve " + " ".join(f"{k}={v}" for k, v in sorted(drops.items())))
        lines.append(f"  {driver}: " + ", ".join(parts))
        for vni, net in sorted((sleeve.get("networks") or {}).items()):
            counters = " ".join(
                f"{k}={v}" for k, v in sorted(net.items())
                if isinstance(v, int) and not isinstance(v, bool) and k != "mtu"
            )
            peers = len(net.get("peers") or ())
            error = f" error: {net['error']}" if net.get("error") else ""
            lines.append(f"    sleeve vni {vni} ({net.get('tap')}): {peers} peers {counters}"
                         f"{error}".rstrip())
    return lines


def _hop_text(h: dict[str, Any]) -> str:
    if h["hop"] == "endpoint":
        return f"{h['name']} {h['ip']} ({h['ifname']}) on host {h['host']}, network {h['network']}"
    if h["hop"] == "port":
        return f"host {h['host']}: port {h.get('link') or '-'} on bridge {h.get('bridge') or '-'}"
    crypto = ", encrypted" if h.get("encrypted") else ""
    state = "" if h.get("peer_alive") else " (peer NOT alive)"
    return (f"tunnel: {h['driver']}/{h['backend']} vni {h['vni']}{crypto}, "
            f"{h.get('from') or '?'} -> {h.get('to') or '?'} (host {h['peer']}){state}")


def _print_trace(t: dict[str, Any]) -> str:
    src, dst, flow = t["src"], t["dst"], t["flow"]
    port = f" port {flow['port']}" if flow.get("port") else ""
    lines = [f"trace {src['name']} ({src['ip']}) -> {dst['name']} ({dst['ip']}) "
             f"{flow['protocol']}{port}"]
    if t.get("path"):
        lines.append("path:")
        lines += [f"  {_hop_text(h)}" for h in t["path"]]
    lines.append(f"verdict: {t['verdict'].upper()}: {t['reason']}")
    kernel = t.get("kernel") or {}
    for c in kernel.get("checks") or ():
        mark = "ok" if c["ok"] else "MISMATCH"
        lines.append(f"  kernel on {kernel['host']}: {mark} {c['what']}: desired {c['desired']}, "
                     f"actual {c['actual']}")
    lines += [f"  not checked: {u}" for u in kernel.get("unchecked") or ()]
    if kernel.get("mismatch"):
        lines.append(f"MISMATCH: desired state says {t['verdict']}, the kernel on "
                     f"{kernel['host']} says {kernel.get('kernel_verdict')}; netd repairs "
                     "its table at the next resync (resync-interval), or restart netd")
    return "\n".join(lines)


def cmd_trace(c: Client, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    query = {k: v for k, v in {"src": a.src, "dst": a.dst, "proto": a.proto,
                               "port": a.port}.items() if v is not None}
    return c.request("GET", f"/v1/trace?{urlencode(query)}"), _print_trace


EVENTS_WAIT = 5.0  # seconds one long poll waits (below READ_TIMEOUT)


def _event_line(e: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.get("time") or 0))
    return f"{when} {e.get('kind', '?'):<16} {e.get('message', '')}"


def follow_events(c: Client, a: argparse.Namespace) -> int:
    """Print the daemon's buffered events, then new ones as they happen (until
    interrupted; `--once`: only what is buffered). One JSON object a line with --json."""
    since = a.since
    try:
        while True:
            wait = 0 if a.once else EVENTS_WAIT
            answer = c.request("GET", f"/v1/events?{urlencode({'since': since, 'wait': wait})}")
            if answer.get("missed") and not a.json:
                print(f"({answer['missed']} events dropped from the daemon's buffer)")
            for event in answer.get("events") or ():
                print(json.dumps(event, sort_keys=True) if a.json else _event_line(event),
                      flush=True)
            since = max(since, int(answer.get("next") or 0))
            if a.once:
                return 0
    except KeyboardInterrupt:
        return 0


# --- commands -----------------------------------------------------------------------
def _parse_opts(values: list[str] | None) -> dict[str, str]:
    opts: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"invalid option {item!r}: expected KEY=VALUE")
        opts[key] = value
    return opts


def cmd_network_create(c: Client, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    body = {
        "name": a.name, "subnet": a.subnet, "tenant": a.tenant, "driver": a.driver,
        "backend": a.backend, "vni": a.vni, "gateway": a.gateway, "mtu": a.mtu,
        "encrypt": a.encrypt or None, "options": _parse_opts(a.opt) or None,
    }
    value = c.request("POST", "/v1/networks", {k: v for k, v in body.items() if v is not None})
    return value, lambda n: (
        f"network {n['name']} created: {n['subnet']} vni {n['vni']} mtu {n['mtu']}"
    )


def _tenant_query(a: argparse.Namespace) -> str:
    return f"?{urlencode({'tenant': a.tenant})}" if a.tenant else ""


def _sg_path(a: argparse.Namespace, *rest: str) -> str:
    parts = "/".join(quote(p, safe="") for p in (a.name, *rest))
    return f"/v1/sg/{parts}{_tenant_query(a)}"


def _rule_text(r: dict[str, Any]) -> str:
    ports = ""
    if r.get("port_min") is not None:
        ports = (f" port {r['port_min']}" if r["port_min"] == r["port_max"]
                 else f" ports {r['port_min']}-{r['port_max']}")
    remote = f"cidr {r['cidr']}" if r.get("cidr") else f"group {r.get('group')}"
    return f"{r['id']}  {r['direction']} {r.get('protocol') or 'any'}{ports} from/to {remote}"


def _print_groups(value: list[dict[str, Any]]) -> str:
    return table([(g["name"], g["tenant"], len(g.get("rules") or ())) for g in value],
                 ["NAME", "TENANT", "RULES"])


def _print_group(g: dict[str, Any]) -> str:
    lines = [f"name: {g['name']}", f"tenant: {g['tenant']}", "rules:"]
    lines += [f"  {_rule_text(r)}" for r in g.get("rules") or ()] or ["  (none: members "
                                                                       "accept no ingress)"]
    members = g.get("members") or []
    lines.append("members:")
    lines.append(_print_endpoints(members) if members else "  (none)")
    return "\n".join(lines)


def cmd_sg_rule_add(c: Client, a: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    body = {"direction": a.direction, "protocol": a.proto, "port": a.port, "cidr": a.cidr,
            "group": a.group}
    value = c.request("POST", _sg_path(a, "rules"),
                      {k: v for k, v in body.items() if v is not None})
    return value, lambda v: (("rule added to " if v["added"] else "rule already in ")
                             + f"{v['group']}: {_rule_text(v['rule'])}")


def _add_sg_commands(sub: Any) -> None:
    sg = sub.add_parser("sg", help="security groups: stateful rules for their members")
    ssub = sg.add_subparsers(dest="action", required=True, metavar="ACTION")

    def tenant(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", help="the group's tenant (default: default)")

    create = ssub.add_parser("create", help="create a security group")
    create.add_argument("name")
    tenant(create)
    create.set_defaults(run=lambda c, a: (c.request("POST", "/v1/sg", {
        k: v for k, v in {"name": a.name, "tenant": a.tenant}.items() if v is not None}),
        lambda g: f"security group {g['name']} created in tenant {g['tenant']}"))
    rm = ssub.add_parser("rm", help="remove a security group (refused while in use)")
    rm.add_argument("name")
    tenant(rm)
    rm.set_defaults(run=lambda c, a: (c.request("DELETE", _sg_path(a)),
                                      lambda v: f"security group {v['removed']} removed"))
    ls = ssub.add_parser("ls", help="list security groups")
    ls.add_argument("--tenant", help="only this tenant's groups")
    ls.set_defaults(run=lambda c, a: (c.request("GET", "/v1/sg" + _tenant_query(a)),
                                      _print_groups))
    inspect = ssub.add_parser("inspect", help="a group's rules and members")
    inspect.add_argument("name")
    tenant(inspect)
    inspect.set_defaults(run=lambda c, a: (c.request("GET", _sg_path(a)), _print_group))
    rule = ssub.add_parser("rule", help="add or remove a group's rules")
    rsub = rule.add_subparsers(dest="rule_action", required=True, metavar="ACTION")
    add = rsub.add_parser("add", help="add a rule")
    add.add_argument("name")
    way = add.add_mutually_exclusive_group(required=True)
    way.add_argument("--ingress", dest="direction", action="store_const", const="ingress")
    way.add_argument("--egress", dest="direction", action="store_const", const="egress")
    add.add_argument("--proto", choices=("tcp", "udp", "icmp", "any"), help="default any")
    add.add_argument("--port", help="N or N-M (tcp, udp)")
    remote = add.add_mutually_exclusive_group(required=True)
    remote.add_argument("--cidr", help="remote addresses")
    remote.add_argument("--group", help="remote group: its members' current addresses")
    tenant(add)
    add.set_defaults(run=cmd_sg_rule_add)
    rrm = rsub.add_parser("rm", help="remove a rule by id (sg inspect shows ids)")
    rrm.add_argument("name")
    rrm.add_argument("rule_id")
    tenant(rrm)
    rrm.set_defaults(run=lambda c, a: (c.request("DELETE", _sg_path(a, "rules", a.rule_id)),
                                       lambda v: f"rule {v['removed']} removed from {v['group']}"))


JSON_HELP = "print machine-readable JSON (also errors, as one line on stderr)"


class _CommandParser(argparse.ArgumentParser):
    """A (sub)command's parser: it takes --json as well, so `netctl network ls --json`
    works like `netctl --json network ls`. Its default is left unset so that a command
    without it keeps what the top level parsed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                          help=JSON_HELP)


def _print_gateway_status(g: dict[str, Any]) -> list[str]:
    lines = []
    if g.get("exposes"):
        lines.append("exposes: " + ", ".join(
            e["network"] + ("" if e.get("masquerade", True) else " (no masquerade)")
            for e in g["exposes"]))
    if g.get("published"):
        lines.append("published: " + ", ".join(
            f"{p['host_port']}/{p['protocol']} -> {p['endpoint']}:{p['port']} ({p['network']})"
            for p in g["published"]))
    for r in g.get("routers") or ():
        lines.append(f"router {r['tenant']}: netns {r['netns']} {r['address']} "
                     f"networks {','.join(r['networks'])}")
    return lines


def _add_gateway_commands(sub: Any) -> None:
    """expose/hide and publish/unpublish (netd.service.gateway)."""
    expose = sub.add_parser("expose", help="this host routes outside traffic for a network's "
                            "subnet to its containers on every host")
    expose.add_argument("network")
    expose.add_argument("--no-masquerade", action="store_true",
                        help="containers keep their addresses on the way out (routed setups)")
    expose.set_defaults(run=lambda c, a: (c.request("POST", "/v1/expose", {
        "network": a.network, "masquerade": not a.no_masquerade}),
        lambda v: f"network {v['network']} exposed by host {v['host']}"
                  + ("" if v["masquerade"] else " (no masquerade)")))
    hide = sub.add_parser("hide", help="stop exposing a network from this host")
    hide.add_argument("network")
    hide.set_defaults(run=lambda c, a: (c.request("POST", "/v1/hide", {"network": a.network}),
                                        lambda v: f"network {v['network']} hidden on host "
                                                  f"{v['host']}"))
    publish = sub.add_parser("publish", help="forward a port of this host (underlay address "
                             "and loopback) to a container's port")
    publish.add_argument("container")
    publish.add_argument("--network", required=True)
    publish.add_argument("--port", required=True, metavar="HOSTPORT:PORT[/tcp|/udp]")
    publish.set_defaults(run=lambda c, a: (c.request("POST", "/v1/publish", {
        "container": a.container, "network": a.network, "port": a.port}),
        lambda v: f"{v['host_port']}/{v['protocol']} on host {v['host']} -> "
                  f"{v['endpoint']}:{v['port']} ({v['network']})"))
    unpublish = sub.add_parser("unpublish", help="remove a container's published ports")
    unpublish.add_argument("container")
    unpublish.add_argument("--network", required=True)
    unpublish.add_argument("--port", metavar="HOSTPORT[/tcp|/udp]",
                           help="only this one (default: all of the container's)")
    unpublish.set_defaults(run=lambda c, a: (c.request("POST", "/v1/unpublish", {
        k: v for k, v in {"container": a.container, "network": a.network,
                          "port": a.port}.items() if v is not None}),
        lambda v: "\n".join(f"{p['host_port']}/{p['protocol']} unpublished" for p in v)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netctl", description="Control the netd daemon on this host.")
    p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET,
                   help=f"netd API socket (default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_CommandParser)

    net = sub.add_parser("network", help="create, list, inspect and remove networks")
    nsub = net.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = nsub.add_parser("create", help="create a network")
    create.add_argument("name")
    create.add_argument("--subnet", required=True, help="CIDR, e.g. 10.1.0.0/24")
    create.add_argument("--tenant", help="owning tenant (default: default)")
    create.add_argument("--driver", help="overlay driver (default weave); the daemon "
                        "offers the drivers it loaded: see `netctl driver ls`")
    create.add_argument("--backend", help="driver backend (default: the driver's own, "
                        "e.g. weave: fastdp|sleeve)")
    create.add_argument("--vni", type=int, help="VNI / segment id (default: lowest free)")
    create.add_argument("--gateway", help="gateway address (default: first usable)")
    create.add_argument("--mtu", type=int, help="MTU (default: underlay MTU less overhead)")
    create.add_argument("--encrypt", action="store_true",
                        help="encrypt (backends that declare it, e.g. weave sleeve)")
    create.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE",
                        help="driver option, repeatable (the driver's options: "
                        "`netctl driver ls`)")
    create.set_defaults(run=cmd_network_create)
    ls = nsub.add_parser("ls", help="list networks")
    ls.set_defaults(run=lambda c, a: (c.request("GET", "/v1/networks"), _print_networks))
    inspect = nsub.add_parser("inspect", help="show one network and its endpoints")
    inspect.add_argument("name")
    inspect.set_defaults(
        run=lambda c, a: (c.request("GET", f"/v1/networks/{quote(a.name, safe='')}"),
                          _print_network))
    rm = nsub.add_parser("rm", help="remove a network (refused while endpoints are attached)")
    rm.add_argument("name")
    rm.set_defaults(
        run=lambda c, a: (c.request("DELETE", f"/v1/networks/{quote(a.name, safe='')}"),
                          lambda v: f"network {v['removed']} removed"))

    attach = sub.add_parser("attach", help="attach a container to a network")
    attach.add_argument("container", help="netns name, netns path or PID")
    attach.add_argument("--network", required=True)
    attach.add_argument("--ip", help="fixed address (default: allocated)")
    attach.add_argument("--mac", help="MAC address (default: derived from the IP)")
    attach.add_argument("--ifname", help="interface name in the container (default eth0, "
                        "or the next free ethN)")
    attach.add_argument("--sg", action="append", metavar="GROUP", help="security group, repeatable")
    attach.set_defaults(run=lambda c, a: (c.request("POST", "/v1/attach", {
        k: v for k, v in {"container": a.container, "network": a.network, "ip": a.ip,
                          "mac": a.mac, "ifname": a.ifname, "sg": a.sg}.items() if v is not None
    }), _print_endpoint))

    detach = sub.add_parser("detach", help="detach a container from a network")
    detach.add_argument("container")
    detach.add_argument("--network", required=True)
    detach.set_defaults(run=lambda c, a: (c.request(
        "POST", "/v1/detach", {"container": a.container, "network": a.network}),
        lambda e: f"{e['name']} detached from {e['network']} (address {e['ip']} released)"))

    endpoint = sub.add_parser("endpoint", help="list endpoints, change their groups")
    esub = endpoint.add_subparsers(dest="action", required=True, metavar="ACTION")
    els = esub.add_parser("ls", help="list endpoints")
    els.add_argument("--network")
    els.set_defaults(run=lambda c, a: (c.request(
        "GET", "/v1/endpoints" + (f"?{urlencode({'network': a.network})}" if a.network else "")),
        _print_endpoints))

    upd = esub.add_parser("update", help="replace an endpoint's security groups in place "
                          "(no --sg: none)")
    upd.add_argument("container")
    upd.add_argument("--network", required=True)
    upd.add_argument("--sg", action="append", metavar="GROUP", default=[],
                     help="security group, repeatable")
    upd.set_defaults(run=lambda c, a: (c.request("POST", "/v1/endpoints/update", {
        "container": a.container, "network": a.network, "sg": a.sg}),
        lambda e: f"{e['name']} on {e['network']}: security groups "
                  f"{','.join(e['security_groups']) or '(none)'}"))

    _add_sg_commands(sub)
    _add_gateway_commands(sub)

    host = sub.add_parser("host", help="list hosts")
    hsub = host.add_subparsers(dest="action", required=True, metavar="ACTION")
    hls = hsub.add_parser("ls", help="hosts, underlay address, liveness")
    hls.set_defaults(run=lambda c, a: (c.request("GET", "/v1/hosts"), _print_hosts))

    driver = sub.add_parser("driver", help="the drivers this daemon loaded")
    dsub = driver.add_subparsers(dest="action", required=True, metavar="ACTION")
    dls = dsub.add_parser("ls", help="drivers, their backends (MTU overhead) and -o options")
    dls.set_defaults(run=lambda c, a: (c.request("GET", "/v1/drivers"), _print_drivers))

    ev = sub.add_parser("events", help="follow what the daemon does: endpoints applied, "
                        "peers up/down, failures (JSON lines with --json)")
    ev.add_argument("--since", type=int, default=0,
                    help="only events numbered above N (default: all the daemon keeps)")
    ev.add_argument("--once", action="store_true", help="print what is buffered and exit")
    ev.set_defaults(run=None)

    tr = sub.add_parser("trace", help="the path between two endpoints and the verdict "
                        "(deciding rule or tenant boundary), checked against the kernel")
    tr.add_argument("src", help="source endpoint: name or address")
    tr.add_argument("dst", help="destination endpoint: name or address")
    tr.add_argument("--proto", choices=("tcp", "udp", "icmp"), help="default icmp")
    tr.add_argument("--port", type=int, help="destination port (tcp, udp)")
    tr.set_defaults(run=cmd_trace)

    status = sub.add_parser("status", help="this daemon: store, networks, endpoints, last sync")
    status.set_defaults(run=lambda c, a: (c.request("GET", "/v1/status"), _print_status))

    demo = sub.add_parser("demo", help="build simulated hosts on this machine and show "
                          "container connectivity across them")
    demo.add_argument("--keep", action="store_true", help="leave the demo up to explore")
    demo.add_argument("--hosts", type=int, default=3, help="number of simulated hosts")
    demo.add_argument("--down", action="store_true", help="remove a demo left up by --keep")
    demo.set_defaults(run=None)
    return p


def _fail(message: str, code: int, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"error": message}), file=sys.stderr)
    else:
        print(f"netctl: {message}", file=sys.stderr)
    sys.exit(code)


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse argv; a usage error is one line (one JSON line with --json anywhere)."""
    parser = build_parser()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit as exc:
        if not exc.code:  # --help (printed to stdout) or a clean exit
            raise
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        message = lines[-1].split(": error: ", 1)[-1] if lines else "invalid arguments"
        as_json = "--json" in argv
        _fail(message if as_json else f"{message} (see netctl --help)", EXIT_USAGE, as_json)


def main(argv: list[str] | None = None) -> None:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    if args.command == "demo":
        from netd import demo

        if args.down:
            sys.exit(demo.down())
        sys.exit(demo.run_demo(keep=args.keep, hosts=args.hosts, as_json=args.json))
    client = Client(args.socket)
    if args.command == "events":
        try:
            sys.exit(follow_events(client, args))
        except CliError as exc:
            _fail(str(exc), exc.exit_code, args.json)
    try:
        value, render = args.run(client, args)
    except CliError as exc:
        _fail(str(exc), exc.exit_code, args.json)
    if args.json:
        print(json.dumps(value, indent=2, sort_keys=True))
    else:
        print(render(value))


if __name__ == "__main__":
    main()
