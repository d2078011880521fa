"""dataplane/rtnl.py's encoding: a route written is the route a dump reads back
(the kernel side is tests/kernel/test_steering.py, test_restart.py, test_hub.py)."""
from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from steerd.dataplane.rtnl import (NLMSGHDR, RTM_NEWROUTE, RTN_UNICAST, Route, _RTMSG,
                                   parse_route, split_messages)

nets4 = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                  st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address), st.integers(0, 32))
nets6 = st.builds(lambda a, p: ipaddress.ip_network((a, p), strict=False),
                  st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address), st.integers(0, 128))


@given(st.one_of(nets4, nets6), st.integers(1, 2**31), st.integers(256, 2**32 - 1))
def test_a_route_reads_back_as_written(net, oif, table):
    r = Route(net, oif, table)
    assert parse_route(r.payload()) == r


def test_messages_are_split_at_their_aligned_lengths():
    a, b = Route(ipaddress.ip_network("10.0.0.0/8"), 3, 2101), \
        Route(ipaddress.ip_network("fd00::/48"), 4, 2102)
    buf = b"".join(NLMSGHDR.pack(NLMSGHDR.size + len(p), RTM_NEWROUTE, 0, i, 0) + p
                   for i, p in enumerate((a.payload(), b.payload())))
    assert [(seq, parse_route(p)) for _, _, seq, p in split_messages(buf)] == [(0, a), (1, b)]


def test_other_route_types_are_not_ours():
    local = bytearray(Route(ipaddress.ip_network("10.0.0.1/32"), 1, 2101).payload())
    local[_RTMSG.size - 5] = RTN_UNICAST + 1     # rtm_type: local
    assert parse_route(bytes(local)) is None
