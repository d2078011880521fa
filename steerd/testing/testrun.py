"""BPF_PROG_TEST_RUN for tc programs, plus a small packet builder.

bcc 0.26 has no Python wrapper for BPF_PROG_TEST_RUN, but libbcc links libbpf,
whose ``bpf_prog_test_run_opts`` we reach through ctypes.  The skb context goes
in and out as ``struct __sk_buff`` so tests can read the mark (and cb[]) the
classifier set.  The kernel accepts only these ctx_in fields: mark, priority,
ingress_ifindex, ifindex (must exist), cb[], tstamp, wire_len, gso_*; the rest
must be zero.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import struct
from typing import NamedTuple

from bcc.libbcc import lib as _lib

from steerd.probe import checksum


class SkBuff(ct.Structure):
    """``struct __sk_buff`` from linux/bpf.h (kernel 6.x layout, 192 bytes)."""

    _fields_ = [
        ("len", ct.c_uint32), ("pkt_type", ct.c_uint32), ("mark", ct.c_uint32),
        ("queue_mapping", ct.c_uint32), ("protocol", ct.c_uint32),
        ("vlan_present", ct.c_uint32), ("vlan_tci", ct.c_uint32), ("vlan_proto", ct.c_uint32),
        ("priority", ct.c_uint32), ("ingress_ifindex", ct.c_uint32), ("ifindex", ct.c_uint32),
        ("tc_index", ct.c_uint32), ("cb", ct.c_uint32 * 5), ("hash", ct.c_uint32),
        ("tc_classid", ct.c_uint32), ("data", ct.c_uint32), ("data_end", ct.c_uint32),
        ("napi_id", ct.c_uint32), ("family", ct.c_uint32), ("remote_ip4", ct.c_uint32),
        ("local_ip4", ct.c_uint32), ("remote_ip6", ct.c_uint32 * 4),
        ("local_ip6", ct.c_uint32 * 4), ("remote_port", ct.c_uint32),
        ("local_port", ct.c_uint32), ("data_meta", ct.c_uint32), ("flow_keys", ct.c_uint64),
        ("tstamp", ct.c_uint64), ("wire_len", ct.c_uint32), ("gso_segs", ct.c_uint32),
        ("sk", ct.c_uint64), ("gso_size", ct.c_uint32), ("tstamp_type", ct.c_uint8),
        ("_pad", ct.c_uint8 * 3), ("hwtstamp", ct.c_uint64),
    ]


assert ct.sizeof(SkBuff) == 192


class _TestRunOpts(ct.Structure):
    """libbpf's ``struct bpf_test_run_opts`` (libbpf >= 0.7)."""

    _fields_ = [
        ("sz", ct.c_size_t), ("data_in", ct.c_void_p), ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32), ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p), ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32), ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32), ("repeat", ct.c_int), ("duration", ct.c_uint32),
        ("flags", ct.c_uint32), ("cpu", ct.c_uint32), ("batch_size", ct.c_uint32),
    ]


_run = _lib.bpf_prog_test_run_opts
_run.restype = ct.c_int
_run.argtypes = [ct.c_int, ct.POINTER(_TestRunOpts)]


class RunResult(NamedTuple):
    retval: int
    duration_ns: int      # average per repetition
    ctx: SkBuff           # __sk_buff after the run (mark, priority, cb[] ...)


def test_run_ctx(prog_fd: int, packet: bytes, repeat: int = 1,
                 ctx: SkBuff | None = None) -> RunResult:
    """Run the program *repeat* times on *packet*; returns the ctx it left."""
    data = ct.create_string_buffer(packet, len(packet))
    ctx_in = ctx if ctx is not None else SkBuff()
    ctx_out = SkBuff()
    opts = _TestRunOpts(sz=ct.sizeof(_TestRunOpts), data_in=ct.addressof(data),
                        data_size_in=len(packet), ctx_in=ct.addressof(ctx_in),
                        ctx_size_in=ct.sizeof(SkBuff), ctx_out=ct.addressof(ctx_out),
                        ctx_size_out=ct.sizeof(SkBuff), repeat=max(1, repeat))
    rc = _run(prog_fd, ct.byref(opts))
    if rc != 0:
        err = -rc if rc < 0 else ct.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")
    return RunResult(opts.retval, opts.duration, ctx_out)


def test_run(prog_fd: int, packet: bytes, repeat: int = 1) -> tuple[int, int, int]:
    """(retval, duration_ns per run, skb->mark after the run)."""
    r = test_run_ctx(prog_fd, packet, repeat)
    return r.retval, r.duration_ns, r.ctx.mark


# --------------------------------------------------------------------------- packets

_PROTOS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}


def build_packet(src: str, dst: str, proto: int | str = "udp", sport: int = 0, dport: int = 0,
                 dscp: int = 0, payload: bytes = b"", frag_offset: int = 0) -> bytes:
    """Ethernet + IPv4/IPv6 + TCP/UDP/ICMP(v6) (any other protocol: bare payload).

    *frag_offset* (IPv4, in 8-byte units) > 0 makes a non-first fragment,
    which carries no L4 header."""
    p = _PROTOS[proto] if isinstance(proto, str) else proto
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if p in (6,):
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    elif p in (17, 136):
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    elif p == 132:
        l4 = struct.pack("!HHII", sport, dport, 0, 0)
    elif p in (1, 58):
        l4 = struct.pack("!BBHHH", 8 if p == 1 else 128, 0, 0, 1, 1)
    else:
        l4 = b""
    if frag_offset:
        l4 = b""
    body = l4 + payload
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
    if s.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, dscp << 2, 20 + len(body), 1,
                          frag_offset & 0x1FFF, 64, p, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
        return eth + b"\x08\x00" + hdr + body
    vtf = (6 << 28) | (dscp << 22)
    hdr = struct.pack("!IHBB16s16s", vtf, len(body), p, 64, s.packed, d.packed)
    return eth + b"\x86\xdd" + hdr + body
