"""steerd.dataplane.links.parse: RTM_NEWLINK datagrams -> interface name and ifindex."""
from __future__ import annotations

import struct

from steerd.dataplane.links import IFLA_IFNAME, RTM_NEWLINK, parse

RTM_DELLINK = 17
IFLA_MTU = 4


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def link_msg(kind: int, index: int, name: str | None, seq: int = 0) -> bytes:
    attrs = attr(IFLA_MTU, struct.pack("=I", 1400))
    if name is not None:
        attrs += attr(IFLA_IFNAME, name.encode() + b"\0")
    body = struct.pack("=BxHiII", 0, 0, index, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_names_and_indexes_of_new_links_in_one_datagram():
    data = (link_msg(RTM_NEWLINK, 7, "ipsec1") + link_msg(RTM_DELLINK, 8, "ipsec2")
            + link_msg(RTM_NEWLINK, 9, "ipsec3") + link_msg(RTM_NEWLINK, 12, None))
    assert parse(data) == {"ipsec1": 7, "ipsec3": 9}


def test_the_latest_announcement_of_a_name_wins():
    assert parse(link_msg(RTM_NEWLINK, 7, "ipsec1") + link_msg(RTM_NEWLINK, 11, "ipsec1")) == {"ipsec1": 11}


def test_truncated_or_malformed_datagrams_end_the_parse():
    whole = link_msg(RTM_NEWLINK, 7, "ipsec1")
    assert parse(whole[:20]) == {}
    assert parse(b"\0" * 16 + whole) == {}          # a zero length cannot advance
    assert parse(whole + whole[:10]) == {"ipsec1": 7}
