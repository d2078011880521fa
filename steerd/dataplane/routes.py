"""Policy routing: one table per tunnel holding the network ranges via the
tunnel's netdev, and one `ip rule fwmark MARK/MASK lookup TABLE` per tunnel.

Routes are device routes (no next hop), as on XFRM interfaces; the namespace
lab's veth stand-ins behave point-to-point (same MAC on both ends, arp off).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TunnelRoute:
    interface: str
    mark: int
    table: int


def _family(net: Network) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def _families(ranges: list[Network]) -> set[int]:
    return {_family(n) for n in ranges}


def install(routes: list[TunnelRoute], ranges: list[Network], mark_mask: int, priority: int) -> None:
    """Make the kernel hold exactly these tables and rules (idempotent)."""
    with IPRoute() as ipr:
        for tr in routes:
            idx = ipr.link_lookup(ifname=tr.interface)
            if not idx:
                raise LookupError(f"tunnel interface {tr.interface!r} not found")
            _sync_table(ipr, tr.table, idx[0], ranges)
            for fam in (socket.AF_INET, socket.AF_INET6):
                _sync_rule(ipr, fam, tr, mark_mask, priority, wanted=fam in _families(ranges))


def _route_dst(r, fam: int) -> str:
    zero = "0.0.0.0" if fam == socket.AF_INET else "::"
    return f"{r.get_attr('RTA_DST') or zero}/{r['dst_len']}"


def _sync_table(ipr: IPRoute, table: int, oif: int, ranges: list[Network]) -> None:
    wanted = {str(n) for n in ranges}
    for fam in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=fam, table=table):
            if r.get_attr("RTA_TABLE") != table:
                continue
            dst = _route_dst(r, fam)
            if dst not in wanted or r.get_attr("RTA_OIF") != oif:
                ipr.route("del", table=table, dst=dst, family=fam, oif=r.get_attr("RTA_OIF"))
    for net in ranges:
        ipr.route("replace", dst=str(net), oif=oif, table=table, family=_family(net))


def _sync_rule(ipr: IPRoute, fam: int, tr: TunnelRoute, mask: int, priority: int, wanted: bool) -> None:
    present = [r for r in ipr.get_rules(family=fam)
               if r.get_attr("FRA_PRIORITY") == priority and r.get_attr("FRA_FWMARK") == tr.mark]
    ok = [r for r in present if r.get_attr("FRA_TABLE") == tr.table and r.get_attr("FRA_FWMASK") == mask]
    for r in present:
        if r not in ok or not wanted:
            _del_rule(ipr, fam, priority, r.get_attr("FRA_FWMARK"), r.get_attr("FRA_FWMASK"),
                      r.get_attr("FRA_TABLE"))
    if wanted and not ok:
        ipr.rule("add", family=fam, priority=priority, fwmark=tr.mark, fwmask=mask, table=tr.table)


def _del_rule(ipr: IPRoute, fam: int, priority: int, mark: int, mask: int, table: int) -> None:
    try:
        ipr.rule("del", family=fam, priority=priority, fwmark=mark, fwmask=mask, table=table)
    except NetlinkError:
        pass


def remove(tables: list[int], priority: int) -> int:
    """Delete every rule at steerd's priority and flush steerd's tables. Returns items removed."""
    n = 0
    with IPRoute() as ipr:
        for fam in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_rules(family=fam):
                if r.get_attr("FRA_PRIORITY") == priority and r.get_attr("FRA_TABLE") in tables:
                    _del_rule(ipr, fam, priority, r.get_attr("FRA_FWMARK"), r.get_attr("FRA_FWMASK"),
                              r.get_attr("FRA_TABLE"))
                    n += 1
            for table in tables:
                for r in ipr.get_routes(family=fam, table=table):
                    if r.get_attr("RTA_TABLE") != table:
                        continue
                    try:
                        ipr.route("del", table=table, dst=_route_dst(r, fam),
                                  family=fam, oif=r.get_attr("RTA_OIF"))
                        n += 1
                    except NetlinkError:
                        pass
    return n
