"""The flow hash's Python twin (steerd.testing.flowhash) computes what the
classifier's flow_hash (ebpf/pkt.h) computes, for any packet: the C runs on
real packets through BPF_PROG_TEST_RUN. (tests/unit/test_abi.py checks the
constants; this checks the algorithm around them.)"""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerd.dataplane.sources import ebpf_dir, inline_includes
from steerd.testing.flowhash import flow_hash
from steerd.testing import testrun

pytestmark = pytest.mark.kernel

HARNESS = r"""
#include "pkt.h"
int flow_hash_of(struct __sk_buff *skb)
{
    struct pkt p = {};
    if (parse_pkt(skb, &p) < 0)
        return TC_ACT_SHOT;
    skb->cb[0] = flow_hash(&p);
    return TC_ACT_OK;
}
"""


@pytest.fixture(scope="module")
def prog_fd():
    import os
    if os.geteuid() != 0:
        pytest.skip("BPF_PROG_TEST_RUN needs root")
    from bcc import BPF   # imported late: collecting this file needs no bcc
    bpf = BPF(text=inline_includes(HARNESS).encode(), cflags=[f"-I{ebpf_dir()}"])
    yield bpf.load_func(b"flow_hash_of", BPF.SCHED_CLS).fd
    bpf.cleanup()


def c_flow_hash(fd: int, src: str, dst: str, proto: int, sport: int, dport: int) -> int:
    res = testrun.test_run_ctx(fd, testrun.build_packet(src, dst, proto, sport, dport))
    assert res.retval == 0, f"harness dropped {src} -> {dst} proto {proto}"
    return res.ctx.cb[0]


addresses4 = st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v)))
addresses6 = st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))
ports = st.integers(0, 65535)
#: With ports (TCP, UDP, SCTP, UDP-Lite) and without (ICMP, ICMPv6).
protos = st.sampled_from([6, 17, 132, 136, 1, 58])


@settings(max_examples=300, deadline=None)
@given(family=st.sampled_from([4, 6]), a4=addresses4, b4=addresses4, a6=addresses6, b6=addresses6,
       proto=protos, sport=ports, dport=ports)
def test_python_twin_equals_the_classifiers_hash(prog_fd, family, a4, b4, a6, b6, proto, sport, dport):
    src, dst = (a4, b4) if family == 4 else (a6, b6)
    if proto in (1, 58):
        sport = dport = 0         # no ports on the wire: the classifier hashes zeros
    assert c_flow_hash(prog_fd, src, dst, proto, sport, dport) == \
        flow_hash(src, dst, proto, sport, dport)
