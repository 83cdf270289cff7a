"""netd's OpenFlow 1.3 controller: an os-ken app run inside the netd process.

Event handlers stay thin: they record the switch connection, hand replies (barrier,
flow stats) and errors to whoever waits for them, and tell the driver that a switch
(re)connected. Everything else (what flows should exist, pushing them) runs in the
driver's apply thread through `Switch`, which sends flow mods fenced by a barrier and
maps every OFPErrorMsg back to the flow mod it answers (by xid).

os-ken runs on native threads (OSKEN_HUB_TYPE=native, its default in 4.x); its threads
are made daemon threads here so a stopping netd is not held up by its listen loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    CONFIG_DISPATCHER,
    DEAD_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

log = logging.getLogger(__name__)

DEFAULT_PORT = 6653
APP_MODULE = __name__


def _daemon_spawn(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    kwargs.pop("raise_error", None)
    thread = hub.HubThread(func, args, {"raise_error": False, **kwargs})
    thread.daemon = True
    thread.start()
    return thread


@dataclass
class _Batch:
    """Messages sent together and fenced by one barrier."""

    xids: dict[int, Any] = field(default_factory=dict)  # xid -> what the message was for
    errors: dict[Any, str] = field(default_factory=dict)  # tag -> decoded error
    replies: list[Any] = field(default_factory=list)  # multipart reply bodies
    done: threading.Event = field(default_factory=threading.Event)
    lost: bool = False  # the connection went away


class NetdOFApp(app_manager.OSKenApp):  # type: ignore[misc]
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datapath: Any = None
        self.connected = threading.Condition()
        self.on_connect: Callable[[], None] = lambda: None
        self.errors_seen = 0
        self._lock = threading.Lock()
        self._by_xid: dict[int, _Batch] = {}

    # -- handlers -------------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)  # type: ignore[misc]
    def _features(self, ev: Any) -> None:
        dp = ev.msg.datapath
        log.info("switch %016x connected (OpenFlow 1.3)", dp.id)
        with self.connected:
            self.datapath = dp
            self.connected.notify_all()
        self.on_connect()

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])  # type: ignore[misc]
    def _state(self, ev: Any) -> None:
        if ev.state != DEAD_DISPATCHER or ev.datapath is not self.datapath:
            return
        log.warning("switch disconnected")
        with self.connected:
            self.datapath = None
        with self._lock:
            pending = {id(b): b for b in self._by_xid.values()}
            self._by_xid.clear()
        for batch in pending.values():  # nobody will answer these: wake their waiters
            batch.lost = True
            batch.done.set()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])  # type: ignore[misc]
    def _error(self, ev: Any) -> None:
        msg = ev.msg
        text = decode_error(msg.type, msg.code)
        self.errors_seen += 1
        with self._lock:
            batch = self._by_xid.get(msg.xid)
        if batch is None:
            log.error("switch error for xid %s: %s", msg.xid, text)
            return
        tag = batch.xids.get(msg.xid)
        log.error("switch refused %s: %s", tag, text)
        batch.errors[tag] = text

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)  # type: ignore[misc]
    def _barrier(self, ev: Any) -> None:
        self._finish(ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)  # type: ignore[misc]
    def _flow_stats(self, ev: Any) -> None:
        msg = ev.msg
        with self._lock:
            batch = self._by_xid.get(msg.xid)
        if batch is None:
            return
        batch.replies.extend(msg.body)
        if not msg.flags & ofproto_v1_3.OFPMPF_REPLY_MORE:
            self._finish(msg.xid)

    def _finish(self, xid: int) -> None:
        with self._lock:
            batch = self._by_xid.get(xid)
            if batch is None:
                return
            for other in list(batch.xids):
                self._by_xid.pop(other, None)
        batch.done.set()

    # -- used by Switch (the driver's thread) ----------------------------------------------
    def wait_datapath(self, timeout: float) -> Any:
        with self.connected:
            self.connected.wait_for(lambda: self.datapath is not None, timeout)
            return self.datapath

    def exchange(self, dp: Any, messages: Sequence[tuple[Any, Any]], final: Any,
                 timeout: float) -> _Batch:
        """Send `messages` ((msg, tag) pairs) then `final` (a barrier or a request whose
        reply ends the batch); wait for that reply."""
        batch = _Batch()
        with self._lock:
            for msg, tag in messages:
                xid = dp.set_xid(msg)
                batch.xids[xid] = tag
                self._by_xid[xid] = batch
            final_xid = dp.set_xid(final)
            batch.xids[final_xid] = "reply"
            self._by_xid[final_xid] = batch
        for msg, _ in messages:
            if not dp.send_msg(msg):
                batch.lost = True
        if not dp.send_msg(final):
            batch.lost = True
        if not batch.lost and not batch.done.wait(timeout):
            batch.lost = True
        with self._lock:
            for xid in batch.xids:
                self._by_xid.pop(xid, None)
        return batch


def decode_error(type_: int, code: int) -> str:
    """An OFPErrorMsg's type and code as OpenFlow 1.3 names them."""
    ofp = ofproto_v1_3
    types = {v: k for k, v in vars(ofp).items() if k.startswith("OFPET_") and isinstance(v, int)}
    type_name = types.get(type_, str(type_))
    stem = type_name.replace("OFPET_", "")
    prefix = {
        "BAD_REQUEST": "OFPBRC_", "BAD_ACTION": "OFPBAC_", "BAD_INSTRUCTION": "OFPBIC_",
        "BAD_MATCH": "OFPBMC_", "FLOW_MOD_FAILED": "OFPFMFC_", "GROUP_MOD_FAILED": "OFPGMFC_",
        "PORT_MOD_FAILED": "OFPPMFC_", "TABLE_MOD_FAILED": "OFPTMFC_",
        "HELLO_FAILED": "OFPHFC_", "SWITCH_CONFIG_FAILED": "OFPSCFC_",
    }.get(stem)
    code_name = str(code)
    if prefix:
        names = [k for k, v in vars(ofp).items() if k.startswith(prefix) and v == code]
        if names:
            code_name = names[0]
    return f"{type_name}/{code_name}"


class Controller:
    """The os-ken app manager running NetdOFApp in this process, listening on
    127.0.0.1:port (one netd per host network namespace, so one port per host)."""

    _started: Controller | None = None

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.host = host
        self.port = port
        self.app: NetdOFApp | None = None

    @property
    def target(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def start(self) -> NetdOFApp:
        if Controller._started is not None:
            if Controller._started.port != self.port:
                raise RuntimeError("os-ken already runs in this process on another port")
            assert Controller._started.app is not None
            self.app = Controller._started.app
            return self.app
        from os_ken import cfg

        hub.spawn = _daemon_spawn  # os-ken's threads must not keep netd alive
        cfg.CONF(args=[], project="os_ken")
        cfg.CONF.set_override("ofp_listen_host", self.host)
        cfg.CONF.set_override("ofp_tcp_listen_port", self.port)
        manager = app_manager.AppManager.get_instance()
        manager.load_apps([APP_MODULE])
        contexts = manager.create_contexts()
        manager.instantiate_apps(**contexts)
        app = next(a for a in manager.applications.values() if isinstance(a, NetdOFApp))
        self.app = app
        Controller._started = self
        return app
