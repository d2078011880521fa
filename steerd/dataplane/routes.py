"""Policy routing: one table per tunnel position holding the network ranges via
the tunnel's netdev (hub mode: every site's ranges via that site's tunnel at the
position), and one `ip rule fwmark MARK/MASK lookup TABLE` per position: at most
6 per family however many sites.

Routes are device routes (no next hop), as on XFRM interfaces; the namespace
lab's veth stand-ins behave point-to-point (same MAC on both ends, arp off).
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .rtnl import Route, Rtnl

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RouteTable:
    """One policy table: packets with *mark* are routed by *routes*
    ((destination, tunnel interface) pairs). With one site that is the site's
    ranges via one tunnel; in hub mode every site's ranges via that site's
    tunnel at the table's position."""

    mark: int
    table: int
    routes: tuple[tuple[Network, str], ...]


def _family(net: Network) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def install(tables: list[RouteTable], mark_mask: int, priority: int) -> None:
    """Make the kernel hold exactly these tables and rules (idempotent; only
    routes that differ are written, so a reload touches only what changed).
    Routes go through raw rtnetlink in batches (rtnl.py): a hub's tables hold
    a route per site."""
    ifindex: dict[str, int] = {}
    for tb in tables:
        for _, ifname in tb.routes:
            if ifname not in ifindex:
                ifindex[ifname] = _ifindex(ifname)
    with Rtnl() as nl:
        for tb in tables:
            _sync_table(nl, tb.table, {Route(net, ifindex[ifname], tb.table)
                                       for net, ifname in tb.routes})
    with IPRoute() as ipr:
        for tb in tables:
            families = {_family(net) for net, _ in tb.routes}
            for fam in (socket.AF_INET, socket.AF_INET6):
                _sync_rule(ipr, fam, tb, mark_mask, priority, wanted=fam in families)


def _ifindex(ifname: str) -> int:
    # one ioctl; not a link dump, which pyroute2 parses at ~1 ms a link (3,000
    # tunnels on a hub: seconds at every start, and at every tunnel recreated)
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise LookupError(f"tunnel interface {ifname!r} not found") from None


def _sync_table(nl: Rtnl, table: int, wanted: set[Route]) -> None:
    present = {r for fam in (socket.AF_INET, socket.AF_INET6) for r in nl.routes(fam, table)}
    wanted_dst = {r.dst for r in wanted}
    # a destination that moves to another interface is replaced, not deleted first
    failed = nl.delete([r for r in present if r not in wanted and r.dst not in wanted_dst])
    failed += nl.replace([r for r in wanted if r not in present])
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        exc = failed[0][1]
        raise OSError(exc.errno, f"table {table}: {exc.strerror}{more}")


def _sync_rule(ipr: IPRoute, fam: int, tb: RouteTable, mask: int, priority: int, wanted: bool) -> None:
    present = [r for r in ipr.get_rules(family=fam)
               if r.get_attr("FRA_PRIORITY") == priority and r.get_attr("FRA_FWMARK") == tb.mark]
    ok = [r for r in present if r.get_attr("FRA_TABLE") == tb.table and r.get_attr("FRA_FWMASK") == mask]
    for r in present:
        if r not in ok or not wanted:
            _del_rule(ipr, fam, priority, r.get_attr("FRA_FWMARK"), r.get_attr("FRA_FWMASK"),
                      r.get_attr("FRA_TABLE"))
    if wanted and not ok:
        ipr.rule("add", family=fam, priority=priority, fwmark=tb.mark, fwmask=mask, table=tb.table)


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
    with Rtnl() as nl:
        for table in sorted(set(tables)):
            gone = [r for fam in (socket.AF_INET, socket.AF_INET6) for r in nl.routes(fam, table)]
            n += len(gone) - len(nl.delete(gone))
    return n
