"""Pushing flows to the connected bridge: Flow values become OpenFlow 1.3 messages.

One install and one delete per flow kind: `install` sends OFPFC_ADD for each flow (an
identical match and priority is replaced in place, so re-installing never drops
traffic), `delete_owner` removes one object's flows with one masked delete on the
cookie, `delete_cookie` removes the flows carrying one exact cookie. Every batch ends
with a barrier, and the switch's errors come back per flow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from os_ken.ofproto import nicira_ext

from netd.errors import DatapathError
from plugins.openflow.app import NetdOFApp
from plugins.openflow.cookies import MAGIC_MASK, MAGIC_SHIFT, NETD_MAGIC, OWNER_MASK
from plugins.openflow.pipeline import Action, Flow

log = logging.getLogger(__name__)

TIMEOUT = 10.0


@dataclass(frozen=True)
class DumpedFlow:
    cookie: int
    table: int
    priority: int
    packets: int


class SwitchDown(DatapathError):
    pass


class Switch:
    def __init__(self, app: NetdOFApp) -> None:
        self.app = app

    def datapath(self, wait: float = 0) -> Any:
        dp = self.app.wait_datapath(wait) if wait else self.app.datapath
        if dp is None:
            raise SwitchDown("the bridge is not connected to netd's controller")
        return dp

    def _actions(self, dp: Any, actions: Sequence[Action]) -> list[Any]:
        parser, ofp = dp.ofproto_parser, dp.ofproto
        out: list[Any] = []
        for action in actions:
            kind = action[0]
            if kind == "output":
                out.append(parser.OFPActionOutput(action[1], 0))
            elif kind == "in_port":
                out.append(parser.OFPActionOutput(ofp.OFPP_IN_PORT, 0))
            elif kind == "set_field":
                out.append(parser.OFPActionSetField(**{action[1]: action[2]}))
            elif kind == "ct":
                _, commit, zone, table = action
                out.append(parser.NXActionCT(
                    flags=nicira_ext.NX_CT_F_COMMIT if commit else 0, zone_src="",
                    zone_ofs_nbits=zone,
                    recirc_table=nicira_ext.NX_CT_RECIRC_NONE if table is None else table,
                    alg=0, actions=[]))
            elif kind == "move":
                out.append(parser.NXActionRegMove(src_field=action[1], dst_field=action[2],
                                                  n_bits=action[3]))
            else:
                raise ValueError(f"unknown action {action!r}")
        return out

    def flow_mod(self, dp: Any, flow: Flow) -> Any:
        parser, ofp = dp.ofproto_parser, dp.ofproto
        instructions: list[Any] = []
        if flow.actions:
            instructions.append(parser.OFPInstructionActions(
                ofp.OFPIT_APPLY_ACTIONS, self._actions(dp, flow.actions)))
        if flow.write_metadata is not None:
            instructions.append(parser.OFPInstructionWriteMetadata(*flow.write_metadata))
        if flow.goto is not None:
            instructions.append(parser.OFPInstructionGotoTable(flow.goto))
        return parser.OFPFlowMod(
            dp, cookie=flow.cookie, table_id=flow.table, command=ofp.OFPFC_ADD,
            priority=flow.priority, match=parser.OFPMatch(**dict(flow.match)),
            instructions=instructions)

    def _delete(self, dp: Any, cookie: int, mask: int) -> Any:
        parser, ofp = dp.ofproto_parser, dp.ofproto
        return parser.OFPFlowMod(
            dp, cookie=cookie, cookie_mask=mask, table_id=ofp.OFPTT_ALL,
            command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
            match=parser.OFPMatch())

    def push(self, install: Iterable[tuple[Flow, Any]], delete_cookies: Iterable[int] = (),
             delete_owners: Iterable[int] = ()) -> dict[Any, str]:
        """Install flows (each with a tag naming its item) and delete by cookie, all in
        one batch fenced by a barrier; returns tag -> error for every refused message."""
        dp = self.datapath()
        messages: list[tuple[Any, Any]] = []
        for cookie in delete_cookies:
            messages.append((self._delete(dp, cookie, (1 << 64) - 1), f"delete {cookie:#x}"))
        for owner in delete_owners:
            messages.append((self._delete(dp, owner, OWNER_MASK), f"delete owner {owner:#x}"))
        for flow, tag in install:
            messages.append((self.flow_mod(dp, flow), tag))
        if not messages:
            return {}
        batch = self.app.exchange(dp, messages, dp.ofproto_parser.OFPBarrierRequest(dp),
                                  TIMEOUT)
        if batch.lost:
            raise SwitchDown("the bridge went away while netd pushed flows")
        return batch.errors

    def dump(self, cookie: int = NETD_MAGIC << MAGIC_SHIFT, mask: int = MAGIC_MASK
             ) -> list[DumpedFlow]:
        """The flows whose cookie matches (default: every netd flow)."""
        dp = self.datapath()
        parser, ofp = dp.ofproto_parser, dp.ofproto
        request = parser.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                             cookie, mask, parser.OFPMatch())
        batch = self.app.exchange(dp, [], request, TIMEOUT)
        if batch.lost:
            raise SwitchDown("the bridge went away while netd read its flows")
        if batch.errors:
            raise DatapathError(f"reading flows failed: {batch.errors}")
        return [DumpedFlow(s.cookie, s.table_id, s.priority, s.packet_count)
                for s in batch.replies]
