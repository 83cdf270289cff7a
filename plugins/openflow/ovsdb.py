"""The host's Open vSwitch configuration through OVSDB (ovsdbapp, as Neutron uses it):
the integration bridge, its controller, and its ports. Never ovs-vsctl output.

Why a wrapper: the driver speaks in its own terms (ensure a bridge, ensure a port with
type/options/external_ids, list ports with their OpenFlow port numbers) and every OVSDB
error becomes a DatapathError naming the object. ovsdbapp keeps one connection with its
own thread and reconnects by itself when ovsdb-server comes back.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from netd.errors import DatapathError

log = logging.getLogger(__name__)

DEFAULT_REMOTE = "unix:/var/run/openvswitch/db.sock"
OVSDB_ENV = "NETD_OVSDB"  # another OVSDB remote (a private instance per host namespace)
CONTROLLER_BACKOFF_MS = 1000  # a restarted netd is reconnected within a second
OWNER_KEY = "netd-owner"  # external_ids key on netd's ports: "<network>/<endpoint>" or a peer


def default_remote() -> str:
    return os.environ.get(OVSDB_ENV) or DEFAULT_REMOTE


def kernel_datapath_available() -> bool:
    """The openvswitch kernel module is loaded (or loadable: it is built in)."""
    return os.path.exists("/sys/module/openvswitch")


@dataclass(frozen=True)
class PortInfo:
    name: str
    ofport: int  # -1 or 0 while vswitchd has not attached it
    type: str
    options: dict[str, str] = field(default_factory=dict)
    external_ids: dict[str, str] = field(default_factory=dict)
    error: str = ""


class Ovsdb:
    def __init__(self, remote: str | None = None, timeout: float = 10) -> None:
        # the `ovs` IDL imports eventlet when installed (os-ken pulls it in) only to check
        # for monkey patching, and eventlet warns about itself on import
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
        from ovsdbapp.backend.ovs_idl import connection
        from ovsdbapp.schema.open_vswitch import impl_idl

        self.remote = remote or default_remote()
        self.timeout = timeout
        try:
            idl = connection.OvsdbIdl.from_server(self.remote, "Open_vSwitch")
            self._conn = connection.Connection(idl=idl, timeout=timeout)
            self.api = impl_idl.OvsdbIdl(self._conn, start=True)
        except Exception as exc:
            raise DatapathError(f"cannot reach OVSDB at {self.remote}: {exc}") from None

    def _run(self, what: str, *commands: Any) -> list[Any]:
        try:
            with self.api.transaction(check_error=True, timeout=self.timeout) as txn:
                for command in commands:
                    txn.add(command)
            return list(txn.result or [])
        except Exception as exc:
            raise DatapathError(f"OVSDB {what} failed: {exc}") from None

    def _read(self, what: str, command: Any) -> Any:
        try:
            return command.execute(check_error=True)
        except Exception as exc:
            raise DatapathError(f"OVSDB {what} failed: {exc}") from None

    # -- bridge ---------------------------------------------------------------------------
    def ensure_bridge(self, name: str, datapath_type: str, controller: str) -> None:
        """The bridge as netd runs it: OpenFlow 1.3 only, fail_mode=secure (the switch
        keeps its flows and forwards nothing else while the controller is away), netd's
        controller retried every second at most. A controller already set is left alone
        (setting it again would drop the switch's connection)."""
        api = self.api
        commands = [
            api.add_br(name, may_exist=True, datapath_type=datapath_type),
            api.db_set("Bridge", name, ("protocols", ["OpenFlow13"]),
                       ("fail_mode", "secure"), ("datapath_type", datapath_type),
                       ("external_ids", {OWNER_KEY: "netd"})),
        ]
        exists = self._read("bridge", api.br_exists(name))
        if not exists or self._read("controller", api.get_controller(name)) != [controller]:
            commands.append(api.set_controller(name, [controller]))
        self._run(f"bridge {name}", *commands)
        rows = self._read("controller", api.db_find(
            "Controller", ("target", "=", controller), columns=["_uuid", "max_backoff"]))
        for row in rows:
            if row.get("max_backoff") != [CONTROLLER_BACKOFF_MS]:
                self._run("controller backoff", api.db_set(
                    "Controller", row["_uuid"], ("max_backoff", CONTROLLER_BACKOFF_MS)))

    def delete_bridge(self, name: str) -> None:
        self._run(f"delete bridge {name}", self.api.del_br(name, if_exists=True))

    # -- ports ----------------------------------------------------------------------------
    def ports(self, bridge: str) -> dict[str, PortInfo]:
        names = set(self._read("list ports", self.api.list_ports(bridge)) or [])
        rows = self._read("interfaces", self.api.db_list(
            "Interface", columns=["name", "ofport", "type", "options", "external_ids", "error"]))
        out: dict[str, PortInfo] = {}
        for row in rows:
            if row["name"] not in names:
                continue
            ofport = row.get("ofport")
            if isinstance(ofport, list):
                ofport = ofport[0] if ofport else -1
            error = row.get("error")
            out[row["name"]] = PortInfo(
                name=row["name"], ofport=int(ofport if ofport is not None else -1),
                type=row.get("type") or "", options=dict(row.get("options") or {}),
                external_ids=dict(row.get("external_ids") or {}),
                error=(error[0] if isinstance(error, list) and error else error or ""),
            )
        return out

    def ensure_port(self, bridge: str, name: str, *, type: str = "",
                    options: dict[str, str] | None = None, owner: str) -> None:
        api = self.api
        self._run(
            f"port {name}",
            api.add_port(bridge, name, may_exist=True),
            api.db_set("Interface", name, ("type", type), ("options", options or {}),
                       ("external_ids", {OWNER_KEY: owner})),
            api.db_set("Port", name, ("external_ids", {OWNER_KEY: owner})),
        )

    def delete_port(self, bridge: str, name: str) -> None:
        self._run(f"delete port {name}", self.api.del_port(name, bridge, if_exists=True))

    def close(self) -> None:
        try:
            self._conn.stop(timeout=2)
        except Exception as exc:  # a closing connection has nothing left to report to
            log.debug("closing OVSDB connection: %s", exc)
