"""Attach/detach steerd's programs on clsact ingress with pyroute2.

steerd owns exactly one filter per program and interface, identified by its
priority and handle, so cleanup removes ours and nothing else. Replacing the
filter (restart, upgrade) swaps the program atomically: packets never see
the interface without a classifier. The classifier sits on the ingress
interfaces; the upstream counter (dataplane/upstream.py) on the tunnels, in
its own priority band (UPSTREAM_PRIO) so the two never replace each other;
the duplication filter (dataplane/duplicate.py) on the tunnels' egress (DUP_PRIO),
the arrival recorder (dataplane/arrival.py) on their ingress (ARRIVAL_PRIO).
"""
from __future__ import annotations

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

FILTER_PRIO = 49152 - 7   # our own priority band; other tc users rarely pick it
FILTER_HANDLE = 0x5e
INGRESS_PARENT = 0xFFFFFFF2
EGRESS_PARENT = 0xFFFFFFF3
FILTER_NAME = "steerd"
UPSTREAM_PRIO = FILTER_PRIO - 1
UPSTREAM_NAME = "steerd-upstream"
DUP_PRIO = FILTER_PRIO - 2
DUP_NAME = "steerd-dup"
ARRIVAL_PRIO = FILTER_PRIO - 3
ARRIVAL_NAME = "steerd-arrival"


def _ifindex(ipr: IPRoute, ifname: str) -> int:
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        raise LookupError(f"interface {ifname!r} not found")
    return idx[0]


def attach(ifname: str, prog_fd: int, prio: int = FILTER_PRIO, name: str = FILTER_NAME,
           parent: int = INGRESS_PARENT) -> None:
    with IPRoute() as ipr:
        idx = _ifindex(ipr, ifname)
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: clsact already there (ours or someone's) is fine
                raise
        ipr.tc("replace-filter", "bpf", idx, handle=FILTER_HANDLE, fd=prog_fd, name=name,
               parent=parent, prio=prio, protocol=0x0003, direct_action=True)


def attached(ifname: str, prio: int = FILTER_PRIO, parent: int = INGRESS_PARENT) -> bool:
    with IPRoute() as ipr:
        try:
            idx = _ifindex(ipr, ifname)
            filters = ipr.get_filters(idx, parent=parent)
        except (LookupError, NetlinkError):
            return False
        return any(f.get("info", 0) >> 16 == prio and f.get_attr("TCA_KIND") == "bpf"
                   for f in filters)


def detach(ifname: str, prio: int = FILTER_PRIO, parent: int = INGRESS_PARENT) -> bool:
    """Remove our filter; remove clsact only when nothing else uses it."""
    with IPRoute() as ipr:
        try:
            idx = _ifindex(ipr, ifname)
        except LookupError:
            return False
        try:
            ipr.tc("del-filter", "bpf", idx, handle=FILTER_HANDLE, parent=parent,
                   prio=prio, protocol=0x0003)
        except NetlinkError:
            return False
        try:
            others = ipr.get_filters(idx, parent=INGRESS_PARENT) + \
                ipr.get_filters(idx, parent=EGRESS_PARENT)
        except NetlinkError:
            others = []
        if not [f for f in others if f.get_attr("TCA_KIND")]:
            try:
                ipr.tc("del", "clsact", idx)
            except NetlinkError:
                pass
        return True
